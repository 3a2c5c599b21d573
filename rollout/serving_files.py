"""``rollout.reconcile.Serving`` through the files ``recwatch serve`` watches: the TF Serving model config
(``--model_config_file``: which versions load and which carry the ``stable``/``canary`` labels) and the canary
weights (``--canary_weights_file``). The server re-reads both on change (``--file_system_poll_wait_seconds``).

:meth:`FileServing.apply` rewrites only the rolled-out model's entry and only when it differs, atomically
(written beside, then renamed), so it is cheap and safe to call after every restart. While a canary runs both
versions are loaded (``specific`` policy) with their labels; otherwise only stable (labelled ``stable``).
The canary's weight is written before a new canary label appears and set to 0 before the label goes, so no
request is ever routed to a label that is not there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    staging.replace(path)


class FileServing:
    def __init__(self, model_config_file: Path, canary_weights_file: Path) -> None:
        self.model_config_file = model_config_file
        self.canary_weights_file = canary_weights_file

    def apply(self, model: str, stable: int, canary: int, weight: float) -> None:
        if not canary:
            self._set_weight(model, 0.0)  # no request may go to a label about to disappear
        self._set_versions(model, stable, canary)
        if canary:
            self._set_weight(model, weight)

    def current(self, model: str) -> tuple[dict[str, int], float]:
        """The model's labels and canary weight as the files say now (for tests and `infra status`-like use)."""
        config = self._read_config()
        entry = self._entry(config, model)
        weights = self._read_weights()
        return dict(entry.version_labels.items()), float(weights.get(model, 0.0))

    def _read_config(self) -> Any:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        return text_format.Parse(self.model_config_file.read_text(), model_server_config_pb2.ModelServerConfig())

    @staticmethod
    def _entry(config: Any, model: str) -> Any:
        for entry in config.model_config_list.config:
            if entry.name == model:
                return entry
        raise KeyError(f"model {model!r} is not in the model config file")

    def _set_versions(self, model: str, stable: int, canary: int) -> None:
        from google.protobuf import text_format

        config = self._read_config()
        entry = self._entry(config, model)
        before = text_format.MessageToString(config)
        entry.model_version_policy.Clear()
        versions = sorted({stable, canary} - {0})
        entry.model_version_policy.specific.versions.extend(versions)
        entry.version_labels.clear()
        entry.version_labels["stable"] = stable
        if canary:
            entry.version_labels["canary"] = canary
        after = text_format.MessageToString(config)
        if after != before:
            _write_atomically(self.model_config_file, after)

    def _read_weights(self) -> dict[str, float]:
        try:
            text = self.canary_weights_file.read_text().strip()
        except FileNotFoundError:
            return {}
        return {k: float(v) for k, v in json.loads(text).items()} if text else {}

    def _set_weight(self, model: str, weight: float) -> None:
        weights = self._read_weights()
        if weights.get(model) == weight and self.canary_weights_file.exists():
            return
        weights[model] = weight
        _write_atomically(self.canary_weights_file, json.dumps(weights, sort_keys=True) + "\n")
