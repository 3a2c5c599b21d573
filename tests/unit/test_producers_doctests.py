"""The examples in the producers docstrings run and print what they claim."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from producers import event_logger, sampling


@pytest.mark.parametrize("module", [event_logger, sampling], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
