"""What the serving benchmark can measure, and the parsing of its comma-separated options."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetDef:
    """One row family. ``kind`` says what process serves it; recwatch rows add ``serve_flags`` to
    ``recwatch serve`` and are skipped (with a note) when ``serve --help`` lacks one of ``requires``."""

    name: str
    kind: str  # "raw" | "recwatch" | "kserve" | "mlserver"
    protocol: str  # loadgen protocol
    description: str
    serve_flags: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    events: bool = False


TARGETS: dict[str, TargetDef] = {
    t.name: t
    for t in (
        TargetDef("raw", "raw", "raw", "the SavedModel's signature called in the generator process: the limit"),
        TargetDef(
            "recwatch",
            "recwatch",
            "tfs-grpc",
            "recwatch serve, inference events to Kafka (the default)",
            events=True,
        ),
        TargetDef("recwatch-nolog", "recwatch", "tfs-grpc", "recwatch serve --no-events", requires=("--no-events",)),
        TargetDef(
            "recwatch-batching",
            "recwatch",
            "tfs-grpc",
            "recwatch serve with server-side batching (TF Serving BatchingParameters), events on",
            ("--enable_batching", "--batching_parameters_file", "{batching_file}"),
            ("--enable_batching", "--batching_parameters_file"),
            events=True,
        ),
        TargetDef(
            "recwatch-tflite",
            "recwatch",
            "tfs-grpc",
            "recwatch serve with batching and --prefer_tflite_model (the version's model.tflite), events on",
            ("--enable_batching", "--batching_parameters_file", "{batching_file}", "--prefer_tflite_model"),
            ("--enable_batching", "--batching_parameters_file", "--prefer_tflite_model"),
            events=True,
        ),
        TargetDef(
            "recwatch-cache",
            "recwatch",
            "tfs-grpc",
            "recwatch serve with the result cache, events on (the request pool repeats: hit path)",
            ("--result_cache_models", "{model}", "--result_cache_bytes", "67108864"),
            ("--result_cache_models", "--result_cache_bytes"),
            events=True,
        ),
        TargetDef("kserve", "kserve", "v2-grpc", "KServe ModelServer, custom kserve.Model, v2 gRPC (binary tensors)"),
        TargetDef("kserve-rest", "kserve", "v2-rest", "the same KServe server over v2 REST (JSON)"),
        TargetDef("mlserver", "mlserver", "v2-rest", "MLServer, custom MLModel, parallel_workers=0, v2 REST (JSON)"),
        TargetDef("mlserver-grpc", "mlserver", "v2-grpc", "the same MLServer over v2 gRPC (binary tensors)"),
    )
}
DEFAULT_TARGETS = (
    "raw",
    "recwatch",
    "recwatch-nolog",
    "recwatch-batching",
    "recwatch-tflite",
    "recwatch-cache",
    "kserve",
    "mlserver",
)


def parse_targets(text: str) -> list[str]:
    """``"raw,kserve"`` -> ``["raw", "kserve"]``: known names, in order, duplicates dropped.

    Raises ValueError naming the unknown ones.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if not names:
        raise ValueError("no target given")
    return list(dict.fromkeys(names))


def parse_positive_ints(text: str, what: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; every value must be a positive integer."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not an integer") from None
        if value < 1:
            raise ValueError(f"{what}: {value} must be >= 1")
        values.append(value)
    if not values:
        raise ValueError(f"{what}: no value given")
    return list(dict.fromkeys(values))


def missing_flags(target: TargetDef, help_text: str) -> list[str]:
    """The flags ``target`` needs that ``recwatch serve --help`` does not list."""
    return [f for f in target.requires if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def expand_flags(flags: Sequence[str], **values: str) -> list[str]:
    return [flag.format(**values) for flag in flags]
