"""Train both models on the real Taobao slice and print their holdout quality next to a popularity baseline.

``python -m training report [DATA]`` splits the log by time (the last 20 % of events are the holdout), trains
the CTR ranker and the sequential recommender on the rest, exports them, and measures the exported models
(:mod:`training.evaluate` describes the protocol). The popularity row ranks items by their count in the
training period, so the numbers have a reference.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from training.evaluate import Popularity, evaluate
from training.pipeline import MODELS, Holdout, load_data, train_and_export

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "taobao-userbehavior"


@dataclass(frozen=True)
class Row:
    model: str
    params: int | None
    train_rows: int
    holdout_rows: int
    auc: float | None
    hit_rate: float | None
    ndcg: float | None
    seconds: float | None


def run_report(
    data: Path,
    *,
    base_path: Path | None = None,
    seed: int = 0,
    verbose: int | str = "auto",
    say: Callable[[str], None] = print,
) -> list[Row]:
    """Train, export (under ``base_path``, or a temporary directory) and evaluate; returns the table's rows."""
    behaviors, summary = load_data(str(data))
    say(summary)
    split = Holdout.build(behaviors)
    say(
        f"time split at {datetime.fromtimestamp(split.cutoff, UTC):%Y-%m-%d %H:%M:%S} UTC: "
        f"{len(split.train)} training events, {len(split.holdout)} holdout events; "
        f"AUC on {len(split.ctr)} holdout CTR samples, HitRate/NDCG@10 on {len(split.task)} ranking queries"
    )
    popularity = Popularity(split.train)
    q = evaluate(popularity.rank_scores, popularity.ctr_scores, split.task, split.ctr)
    rows = [Row("popularity", None, len(split.train), len(split.holdout), q.auc, q.hit_rate, q.ndcg, None)]
    with tempfile.TemporaryDirectory(prefix="recwatch-report-") as tmp:
        base = base_path or Path(tmp)
        for kind in MODELS:
            say(f"training {kind}")
            t = train_and_export(
                kind, split.train, base, kind, _next_version(base / kind), seed=seed, verbose=verbose, holdout=split
            )
            assert t.quality is not None
            rows.append(
                Row(kind, t.params, t.train_rows, len(split.holdout), t.quality.auc, t.quality.hit_rate,
                    t.quality.ndcg, t.seconds)
            )  # fmt: skip
    return rows


def _next_version(model_dir: Path) -> int:
    existing = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit()] if model_dir.is_dir() else []
    return max(existing, default=0) + 1


def format_table(rows: list[Row]) -> str:
    """A fixed-width table; ``-`` where a model has no such metric."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = ("model", "params", "train rows", "holdout rows", "AUC", "HitRate@10", "NDCG@10", "train s")
    lines = [
        (r.model, num(r.params, ","), f"{r.train_rows:,}", f"{r.holdout_rows:,}", num(r.auc, ".4f"),
         num(r.hit_rate, ".4f"), num(r.ndcg, ".4f"), num(r.seconds, ".1f"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in lines)])
