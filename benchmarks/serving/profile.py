"""Where a server's CPU goes per request: ``python -m benchmarks.serving.profile --target recwatch``.

Starts one target as the benchmark does (core 0, same model, same generator on core 1), drives it closed-loop
and, while it runs, samples every thread of the server — Python, gRPC core, TensorFlow's pools, librdkafka —
with ``perf record -e cpu-clock`` (CPU samples, so a thread waiting for the core or for a lock costs nothing).
Prints the server's CPU per request and the share of each component, grouped by shared object (the Python
interpreter, TensorFlow, gRPC core, protobuf, numpy, libc's malloc/memcpy, the kernel's loopback TCP and
context switches), plus the top symbols. Needs ``perf`` (Debian: linux-perf). For Python-level stacks run
py-spy on the pid it prints (``py-spy dump --pid PID``, ``py-spy record --pid PID --native``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

GROUPS: tuple[tuple[str, str], ...] = (
    (r"libpython|\[JIT\]|^python", "Python interpreter"),
    (r"tensorflow|_pywrap_tfe|_pywrap_tensorflow|_dtypes", "TensorFlow runtime"),
    (r"cygrpc|grpc", "gRPC core"),
    (r"_message|upb|protobuf", "protobuf (upb)"),
    (r"_multiarray|numpy", "numpy"),
    (r"rdkafka", "librdkafka (events)"),
    (r"^libc\.|libm\.|ld-linux|libstdc\+\+|\[vdso\]", "libc / C++ runtime (malloc, memcpy, TLS)"),
    (r"\[kernel", "kernel (TCP loopback, futex, scheduling)"),
)


def group_of(dso: str) -> str:
    """The component a shared object belongs to (GROUPS order decides), or "other"."""
    for pattern, name in GROUPS:
        if re.search(pattern, dso):
            return name
    return "other"


def parse_perf_report(text: str) -> list[tuple[float, str, str]]:
    """``perf report --stdio --sort dso,sym -g none`` lines -> (percent, dso, symbol)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+(?: \S+)*?)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            out.append((float(m.group(1)), m.group(2).strip(), m.group(3).strip()))
    return out


def summarize(entries: Sequence[tuple[float, str, str]], top: int = 15) -> str:
    groups: dict[str, float] = {}
    for pct, dso, _ in entries:
        groups[group_of(dso)] = groups.get(group_of(dso), 0.0) + pct
    lines = ["share of the server's CPU samples by component:"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines.append(f"top {top} symbols:")
    lines += [f"  {pct:5.1f}%  {sym}  [{dso}]" for pct, dso, sym in sorted(entries, reverse=True)[:top]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.serving.fleet import Fleet
    from benchmarks.serving.run import _export_model
    from benchmarks.serving.targets import TARGETS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving.profile", description=__doc__)
    parser.add_argument("--target", default="recwatch", choices=[t for t in TARGETS if t != "raw"])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", choices=("dcn", "tiny"), default="dcn")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--nice", type=int, default=0, help="niceness of the server and the generator")
    args = parser.parse_args(argv)
    perf = shutil.which("perf")
    if perf is None:
        print("profile: needs perf (apt-get install linux-perf)", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("RECWATCH_CACHE") or Path.home() / ".cache" / "recwatch").absolute()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="recwatch-profile-"))).absolute()
    model_dir = _export_model(args.model, cache / "bench-models")
    fleet = Fleet(
        workdir, cache, model_dir, args.model, kafka=os.environ.get("RECWATCH_KAFKA"), nice=args.nice, say=print
    )
    try:
        fleet.start([args.target])
        if args.target not in fleet.endpoints:
            print(f"profile: {args.target} did not start: {fleet.skipped.get(args.target)}", file=sys.stderr)
            return 1
        assert fleet.generator is not None
        server = fleet.servers[args.target]
        result: dict[str, Any] = {}
        command = {
            "op": "run",
            "endpoint": asdict(fleet.endpoints[args.target]),
            "rows": args.rows,
            "concurrency": args.concurrency,
            "warmup_s": 2.0,
            "duration_s": args.seconds + 2.0,
        }
        driver = threading.Thread(target=lambda: result.update(fleet.generator.call(command)))  # type: ignore[union-attr]
        driver.start()
        time.sleep(2.0)
        cpu0 = server.cpu_seconds()
        data = workdir / f"{args.target}.perf.data"
        subprocess.run(
            [
                *("taskset", "-c", "1", perf, "record", "-e", "cpu-clock", "-F", "499", "-p", str(server.pid)),
                *("-o", str(data), "--", "sleep", str(args.seconds)),
            ],
            capture_output=True,
            check=False,
        )
        cpu = server.cpu_seconds() - cpu0
        driver.join()
        m = result["measurement"]
        req_s = m["completed"] / m["window_s"]
        report = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        print(
            f"{args.target} (pid {server.pid}), {args.rows} rows x {args.concurrency} in flight: {req_s:,.0f} req/s, "
            f"{1000 * cpu / (req_s * args.seconds):.2f} ms CPU per request (while sampled)"
        )
        print(summarize(parse_perf_report(report)), end="")
        print(f"perf data: {data}")
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
