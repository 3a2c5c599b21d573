"""``python -m training``: train and export the models, or report their quality on the real slice.

Examples::

    python -m training train --model ctr --data synthetic --base-path /tmp/models --model-name ranker --version 1
    python -m training train --model sasrec --data ../shared/data/taobao-userbehavior --base-path /tmp/models \\
        --model-name seqrec --version 1 --reuse
    python -m training report
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.errors import TrainingError
from training.export import version_dir, version_exists
from training.pipeline import HOLDOUT_FRACTION, MODELS, Holdout, load_data, train_and_export


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train and export the models, or report their quality on the real slice."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one model and write BASE_PATH/MODEL_NAME/VERSION/")
    train.add_argument("--model", choices=MODELS, required=True)
    train.add_argument("--data", required=True, help="'synthetic', or a UserBehavior.csv file or directory of them")
    train.add_argument("--base-path", type=Path, required=True, help="model repository root")
    train.add_argument("--model-name", help="directory under the base path (default: the --model value)")
    train.add_argument("--version", type=int, default=1)
    train.add_argument("--epochs", type=int, help="override the model's default number of epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--reuse", action="store_true", help="do nothing when the version already exists")
    train.add_argument(
        "--holdout-fraction",
        type=float,
        default=HOLDOUT_FRACTION,
        help="train on the earliest events and report metrics on this last fraction; 0 trains on all, no metrics",
    )
    train.add_argument("--synthetic-users", type=int, default=20_000, help="users to generate for --data synthetic")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="train both models on the real slice and print the quality table")
    report.add_argument("data", nargs="?", type=Path, default=None, help="UserBehavior.csv file or directory")
    report.add_argument("--base-path", type=Path, help="keep the exported models here (default: a temporary dir)")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _verbosity(quiet: bool) -> int:
    # Keras redraws its bar with carriage returns: fine on a terminal, one line per epoch is better in a log.
    return 0 if quiet else 1 if sys.stdout.isatty() else 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for chatty in ("tensorflow", "absl"):  # SavedModel export narrates every step at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return _train(args) if args.command == "train" else _report(args)
    except (TrainingError, ValueError) as exc:
        print(f"training: {exc}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    name = args.model_name or args.model
    target = version_dir(args.base_path, name, args.version)
    if version_exists(args.base_path, name, args.version) and args.reuse:
        print(f"reusing {target}")
        return 0
    if target.exists():
        print(f"training: {target} already exists (pass --reuse to keep it)", file=sys.stderr)
        return 1
    behaviors, summary = load_data(args.data, seed=args.seed, synthetic_users=args.synthetic_users)
    print(summary, flush=True)
    holdout = None
    train = behaviors
    if args.holdout_fraction > 0:
        holdout = Holdout.build(behaviors, fraction=args.holdout_fraction)
        train = holdout.train
    result = train_and_export(
        args.model, train, args.base_path, name, args.version,
        seed=args.seed, epochs=args.epochs, verbose=_verbosity(args.quiet), holdout=holdout,
    )  # fmt: skip
    line = f"{result.model} -> {result.path}: {result.params:,} params, {result.train_rows:,} training rows, "
    line += f"trained in {result.seconds:.1f} s"
    if result.quality is not None:
        q = result.quality
        if q.auc is not None:
            line += f"; holdout AUC {q.auc:.4f} ({q.ctr_rows:,} samples)"
        line += f"; HitRate@10 {q.hit_rate:.4f}, NDCG@10 {q.ndcg:.4f} ({q.queries:,} queries, 1 + 99 sampled)"
    print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    from training.report import DEFAULT_DATA, format_table, run_report

    data = args.data or DEFAULT_DATA
    if not data.exists():
        print(f"training: {data} does not exist; pass the directory of the UserBehavior slice", file=sys.stderr)
        return 1
    rows = run_report(data, base_path=args.base_path, seed=args.seed, verbose=_verbosity(args.quiet))
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
