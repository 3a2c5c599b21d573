"""Installing a Debian package on demand: nothing is run when the binary is there, and a clear error (with the
command to run by hand) when apt-get cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import apt
from infra.errors import MissingToolError


def test_an_installed_binary_is_returned_without_touching_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apt, "_run", lambda *a: pytest.fail("apt-get must not run"))
    assert apt.ensure_package("clickhouse-server", lambda: Path("/usr/bin/clickhouse")) == Path("/usr/bin/clickhouse")


def test_without_apt_get_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infra.apt.shutil.which", lambda name: None)
    with pytest.raises(MissingToolError, match="apt-get install --no-install-recommends prometheus-alertmanager"):
        apt.ensure_package("prometheus-alertmanager", lambda: None)
