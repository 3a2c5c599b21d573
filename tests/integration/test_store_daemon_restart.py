"""The chDB store daemon comes back where its clients look for it, and a client made before a restart goes on
after it (as the worker, the alerter, the controller, the trainer and ``recwatch sql`` do)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from store import StoreUnavailableError, migrate, open_store
from store.daemon import find_daemon, port_file
from tests.conftest import start_chdb_daemon

pytestmark = pytest.mark.integration


def test_a_client_reconnects_to_a_daemon_restarted_after_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "chdb"
    daemon = start_chdb_daemon(path)
    try:
        address = find_daemon(path)
        client = open_store(f"chdb://{path}")
        client.connect()
        migrate(client)
        client.insert(
            "detector_checkpoints",
            {"series": ["s"], "detector": ["d"], "through_us": [1], "state": ["before"], "updated_us": [1]},
        )

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
        with pytest.raises(StoreUnavailableError):
            client.query("SELECT count() FROM detector_checkpoints")
        # a long-running client made while the daemon is down does not open the directory in-process (it would
        # lock the restarted daemon out)
        late = open_store(f"chdb://{path}", long_running=True)
        with pytest.raises(StoreUnavailableError):
            late.connect()

        daemon = start_chdb_daemon(path)
        assert find_daemon(path) == address  # the port recorded at the first start
        assert port_file(path).read_text().strip() == str(address[1] if address else "")
        assert client.query("SELECT count() FROM detector_checkpoints").scalar() == 1  # the same client object
        late.connect()
        assert late.query("SELECT state FROM detector_checkpoints").scalar() == "before"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
