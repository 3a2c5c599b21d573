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


def test_topic_configs_keep_the_model_updates_history_and_need_two_in_sync_replicas_on_three_brokers() -> None:
    from infra.stack import topic_configs
    from schemas import topics

    one, three = topic_configs(1), topic_configs(3)
    assert set(one) == set(three) == set(topics.ALL)
    assert one[topics.MODEL_UPDATES] == {"retention.ms": "-1"} and one[topics.INFERENCE] == {}
    assert all(c["min.insync.replicas"] == "2" for c in three.values())
    assert [n for n, c in three.items() if "retention.ms" in c] == [topics.MODEL_UPDATES]
