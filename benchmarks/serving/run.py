"""``recwatch bench serving``: recwatch against KServe, MLServer and the raw signature call, in one run.

Every target serves the same SavedModel (a ~2M-parameter DCN-style ranker by default) and is driven by the
same closed-loop generator (loadgen.py) with a ranking request (1 user x 32 candidates) and a single-row
request at concurrency 1, 8 and 32. Servers are pinned to core 0, the generator to core 1. Cells are
interleaved A B A B: for each repeat, for each (rows, concurrency), every target in turn — so a slow minute
on a shared machine hits all targets alike. Prints req/s, rows/s, p50/p99, the ratios against KServe and
against the raw call, the logging cost and the issue's PASS/FAIL lines.

Time: about (warm-up + duration + ~0.5 s) x targets x rows x concurrencies x repeats, plus ~1 min to start
the servers: ~10 min with the defaults (8 x 2 x 3 x 2 = 96 cells of 1 + 3 s), ~12 min at most: measuring stops
after ``--max-minutes`` (default 11; the cells left are dropped and said so). The first run also builds the
peers' venvs (a few minutes, once).
All processes it starts are stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.serving import stats
from benchmarks.serving.targets import DEFAULT_TARGETS, TARGETS, parse_positive_ints, parse_targets

ENV_HELP = """\
environment variables:
  RECWATCH_CACHE  where the peers' venvs (bench-venvs/) and the exported model (bench-models/) are kept
                  (default: ~/.cache/recwatch)
  RECWATCH_KAFKA  bootstrap servers for the event-logging rows; without it a broker is started for the run
"""
_CELL_OVERHEAD_S = 0.3
LEGEND = """\
spread: (max - min) / mean req/s of the repeats. cpu ms/req: the server's CPU time (all its processes and
threads) per request; req/s/core = 1000 / cpu ms/req, what one dedicated core could serve — it moves far less
than req/s when other jobs share the machine. (busy core N%): other processes used N% of the server's core
during the cell. (generator N%): the load generator used N% of its core (near 100%: it may cap that row).
"""
MAX_ABS_SCORE_DIFF = 1e-4


def build_parser(prog: str = "recwatch bench serving") -> argparse.ArgumentParser:
    rows = "\n".join(f"  {t.name:<18} {t.description}" for t in TARGETS.values())
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n\n")[0],
        epilog=f"targets:\n{rows}\n\n{ENV_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--concurrency", default="1,8,32", help="requests in flight (default 1,8,32)")
    parser.add_argument("--rows", default="32,1", help="rows per request (default 32,1)")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, of: {', '.join(TARGETS)} (default {','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument("--repeat", type=int, default=2, help="A B A B rounds over all targets (default 2)")
    parser.add_argument("--model", choices=("dcn", "tiny"), default="dcn", help="dcn: ~2M params (default)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="wait up to this many seconds for an idle core before a cell"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the servers and the generator (e.g. -10 as root on a shared machine, so other jobs "
        "take less of the measured cores; default 0)",
    )
    parser.add_argument("--max-minutes", type=float, default=11.0, help="stop measuring after this (default 11)")
    parser.add_argument("--workdir", type=Path, help="logs and configs (default: a new temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every row instead")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it measured (whatever the verdicts), 2 on bad options, 1 on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        targets = parse_targets(args.targets)
        concurrencies = parse_positive_ints(args.concurrency, "--concurrency")
        row_counts = parse_positive_ints(args.rows, "--rows")
        if args.repeat < 1 or args.duration <= 0 or args.warmup < 0:
            raise ValueError("--repeat must be >= 1, --duration > 0, --warmup >= 0")
    except ValueError as exc:
        parser.error(str(exc))
    cache = Path(os.environ.get("RECWATCH_CACHE") or Path.home() / ".cache" / "recwatch").absolute()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="recwatch-bench-"))).absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    fleet = None
    try:
        model_dir = _export_model(args.model, cache / "bench-models")
        from benchmarks.serving.fleet import Fleet

        say(f"serving benchmark: model {model_dir}, logs in {workdir}/logs")
        fleet = Fleet(
            workdir, cache, model_dir, args.model, kafka=os.environ.get("RECWATCH_KAFKA"), nice=args.nice, say=say
        )
        fleet.start(targets)
        _check_answers(fleet, targets, row_counts, say)
        cells = _measure(fleet, targets, row_counts, concurrencies, args, say)
    except KeyboardInterrupt:
        say("interrupted: stopping every process this run started")
        return 130
    except Exception as exc:
        from benchmarks.serving.fleet import GeneratorError
        from benchmarks.serving.peers import PeerError

        if not isinstance(exc, GeneratorError | PeerError | OSError):
            raise
        say(f"serving benchmark failed: {type(exc).__name__}: {exc} (logs in {workdir}/logs)")
        return 1
    finally:
        if fleet is not None:
            fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rows = stats.aggregate(cells)
    items = stats.verdicts(rows)
    document = _as_json(rows, items, fleet.skipped, fleet, args)
    if args.save:
        args.save.write_text(json.dumps(document, indent=2) + "\n")
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(_report(rows, items, fleet.skipped, markdown=args.markdown), end="")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _export_model(kind: str, base: Path) -> Path:
    """The model's version directory, with model.tflite beside saved_model.pb (for recwatch-tflite)."""
    from serving.tflite import TFLITE_FILE, convert_version

    if kind == "dcn":
        from benchmarks.serving.dcn_model import export_dcn_ranker

        version = export_dcn_ranker(base, model_name="dcn")
    else:
        from training.tiny_model import export_tiny_ranker

        version = base / "tiny" / "1"
        if not (version / "saved_model.pb").exists():
            version = export_tiny_ranker(base, model_name="tiny")
    if not (version / TFLITE_FILE).exists():
        convert_version(version)
    return version


def _check_answers(fleet: Any, targets: list[str], row_counts: list[int], say: Any) -> None:
    """One request per target and row count; a target whose scores differ from the raw call is skipped."""
    for name in targets:
        endpoint = fleet.endpoints.get(name)
        if endpoint is None:
            continue
        for rows in row_counts:
            try:
                diff = fleet.generator.call({"op": "check", "endpoint": asdict(endpoint), "rows": rows})["max_abs_diff"]
            except Exception as exc:
                fleet.skipped[name] = f"check request failed: {exc}"
                break
            if diff > MAX_ABS_SCORE_DIFF:
                fleet.skipped[name] = f"scores differ from the raw call by {diff:g} at {rows} rows"
                break
        if name in fleet.skipped:
            fleet.endpoints.pop(name)
            say(f"  skipping {name}: {fleet.skipped[name]}")


def _measure(
    fleet: Any, targets: list[str], row_counts: list[int], concurrencies: list[int], args: Any, say: Any
) -> list[stats.Cell]:
    from benchmarks.serving.processes import core_busy_seconds

    live = [t for t in targets if t in fleet.endpoints]
    plan = [(r, n, c, t) for r in range(args.repeat) for n in row_counts for c in concurrencies for t in live]
    per_cell = args.warmup + args.duration + _CELL_OVERHEAD_S + 0.2
    say(f"measuring {len(plan)} cells ({', '.join(live)}): about {len(plan) * per_cell / 60:.1f} min")
    deadline = time.monotonic() + args.max_minutes * 60
    cells = []
    for i, (repeat, rows, concurrency, target) in enumerate(plan):
        if time.monotonic() + per_cell > deadline:
            say(f"--max-minutes reached: {len(plan) - i} cells not measured")
            break
        server = fleet.servers[target]
        core = 1 if target == "raw" else 0
        _wait_quiet(core, args.settle)
        cpu0, busy0, t0 = server.cpu_seconds(), core_busy_seconds(core), time.monotonic()
        command = {
            "op": "run",
            "endpoint": asdict(fleet.endpoints[target]),
            "rows": rows,
            "concurrency": concurrency,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
        }
        m = fleet.generator.call(command)["measurement"]
        cpu, busy, wall = server.cpu_seconds() - cpu0, core_busy_seconds(core) - busy0, time.monotonic() - t0
        cell = stats.Cell(
            target=target,
            rows=rows,
            concurrency=concurrency,
            repeat=repeat,
            completed=m["completed"],
            errors=m["errors"],
            window_s=m["window_s"],
            latencies_us=m["latencies_us"],
            server_cpu_s=cpu,
            total_completed=m["total_completed"],
            foreign_busy=max(0.0, (busy - cpu) / wall) if wall > 0 else None,
            generator_busy=m["generator_cpu_s"] / (args.warmup + args.duration) if target != "raw" else None,
        )
        cells.append(cell)
        note = f"  errors {cell.errors}: {m['error_sample']}" if cell.errors else ""
        say(f"  [{i + 1}/{len(plan)}] {target:<18} {rows:>3} rows x {concurrency:<2} {cell.req_s:8,.0f} req/s{note}")
    return cells


def _wait_quiet(core: int, limit_s: float, *, busy_below: float = 0.15, sample_s: float = 0.2) -> None:
    """Wait (at most ``limit_s``) until ``core`` is less than ``busy_below`` busy over ``sample_s``: on a
    shared machine, start a cell in a quiet moment rather than in the middle of someone's test run."""
    from benchmarks.serving.processes import core_busy_seconds

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = core_busy_seconds(core)
        time.sleep(sample_s)
        if (core_busy_seconds(core) - before) / sample_s < busy_below:
            return


def _report(rows: list[stats.Row], items: list[stats.Verdict], skipped: dict[str, str], *, markdown: bool) -> str:
    out = [stats.format_table(rows, markdown=markdown), ""]
    costs = stats.logging_costs(rows)
    overall = stats.overall_logging_cost(costs)
    if overall is not None:
        out.append(f"logging cost (1 - recwatch / recwatch-nolog req/s): {overall:+.1%} overall")
    cpu_cost = stats.logging_cpu_cost(rows)
    if cpu_cost is not None:
        out.append(f"logging CPU cost (recwatch / recwatch-nolog cpu ms/req - 1): {cpu_cost:+.1%} overall")
    out.append(stats.format_verdicts(items))
    for name, reason in skipped.items():
        out.append(f"skipped {name}: {reason}")
    out.append(LEGEND)
    return "\n".join(out) + "\n"


def _as_json(
    rows: list[stats.Row], items: list[stats.Verdict], skipped: dict[str, str], fleet: Any, args: Any
) -> dict[str, Any]:
    costs = stats.logging_costs(rows)
    return {
        "options": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "model": args.model,
        },
        "protocols": {name: endpoint.protocol for name, endpoint in fleet.endpoints.items()},
        "rows": [
            {
                **{k: v for k, v in asdict(r).items() if k != "runs_req_s"},
                "runs_req_s": list(r.runs_req_s),
                "rows_s": r.rows_s,
                "spread": r.spread,
                "capacity_req_s": r.capacity_req_s,
            }
            for r in rows
        ],
        "logging_cost": {
            "overall": stats.overall_logging_cost(costs),
            "cells": {f"{r}x{c}": v for (r, c), v in costs.items()},
        },
        "verdicts": [asdict(v) for v in items],
        "skipped": skipped,
    }


if __name__ == "__main__":
    raise SystemExit(main())
