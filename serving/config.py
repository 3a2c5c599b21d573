"""What to serve: models, version policies and labels, from TF Serving's flags or its model config file.

``--model_config_file`` takes TF Serving's ``ModelServerConfig`` text format, so an existing deployment's file
works unchanged::

    model_config_list {
      config {
        name: "ranker"
        base_path: "/models/ranker"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

recwatch adds one thing TF Serving lacks: a canary weight per model, the share of requests that name neither
a version nor a label which go to the ``canary`` label (the rest go to ``stable``). It is set at run time
(``ModelManager.set_canary_weight``, ModelService's HandleReloadConfigRequest with the ``x-recwatch-canary-weights``
metadata, or ``--canary_weights_file``), never in the TF Serving file, which must stay loadable by TF Serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.errors import InvalidRequestError

PolicyKind = Literal["latest", "all", "specific"]


class ConfigFileError(InvalidRequestError):
    """A model config or canary weights file (or request) that cannot be used; the message says why."""


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: the latest ``num_versions`` (default 1), all, or specific ones."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available`` (ascending)."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(v for v in available if v in self.versions)
        return sorted(available)[-self.num_versions :] if available else []


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


def single_model(name: str, base_path: Path) -> list[ModelConfig]:
    """The config that ``--model_name`` / ``--model_base_path`` describe."""
    return [ModelConfig(name=name, base_path=base_path.absolute())]


def parse_model_server_config(text: str, *, relative_to: Path | None = None) -> list[ModelConfig]:
    """Models from TF Serving's ``ModelServerConfig`` text format (``model_config_list`` only)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ConfigFileError(f"not a ModelServerConfig in text format: {exc}") from None
    return models_from_proto(proto, relative_to=relative_to)


def models_from_proto(proto: Any, *, relative_to: Path | None = None) -> list[ModelConfig]:
    if proto.WhichOneof("config") != "model_config_list":
        raise ConfigFileError("only model_config_list is supported (custom_model_config is not)")
    models: list[ModelConfig] = []
    for c in proto.model_config_list.config:
        if not c.name or not c.base_path:
            raise ConfigFileError(f"every model config needs a name and a base_path (got name={c.name!r})")
        if c.model_platform not in ("", "tensorflow"):
            raise ConfigFileError(f"model {c.name!r}: model_platform {c.model_platform!r} is not supported")
        base = Path(c.base_path)
        if not base.is_absolute() and relative_to is not None:
            base = relative_to / base
        models.append(
            ModelConfig(name=c.name, base_path=base, policy=_policy(c), labels=dict(c.version_labels.items()))
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigFileError(f"model names must be unique: {names}")
    return models


def _policy(c: Any) -> VersionPolicy:
    which = c.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        versions = tuple(c.model_version_policy.specific.versions)
        if not versions:
            raise ConfigFileError(f"model {c.name!r}: a specific version policy needs versions")
        return VersionPolicy("specific", versions=versions)
    if which == "latest" and c.model_version_policy.latest.num_versions > 0:
        return VersionPolicy("latest", num_versions=c.model_version_policy.latest.num_versions)
    return VersionPolicy()


def parse_canary_weights(text: str) -> dict[str, float]:
    """``{"ranker": 0.1}`` (JSON) or ``ranker=0.1,seq=0.5`` -> weights in [0, 1]."""
    text = text.strip()
    raw: dict[str, Any]
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigFileError(f"canary weights are not valid JSON: {exc}") from None
    else:
        raw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ConfigFileError(f"canary weight {part!r} is not of the form model=weight")
            raw[name.strip()] = value.strip()
    weights: dict[str, float] = {}
    for name, value in raw.items():
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ConfigFileError(f"canary weight of {name!r} is not a number: {value!r}") from None
        if not 0.0 <= w <= 1.0:
            raise ConfigFileError(f"canary weight of {name!r} must be in [0, 1], got {w}")
        weights[str(name)] = w
    return weights
