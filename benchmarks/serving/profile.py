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


def summarize_stacks(collapsed: str, cpu_ms: float, top: int = 25) -> str:
    """py-spy's raw output (``frame;frame;... count`` per line, idle threads excluded) -> the Python functions
    with the most samples, self and inclusive, in ms of the server's CPU per request."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [re.sub(r" \(([^)]*/)?([^/)]+)\)$", r" (\2)", f) for f in stack.split(";")]
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_count[frame] = incl_count.get(frame, 0) + count
    if not total:
        return "no samples\n"
    per = cpu_ms / total
    lines = [f"{total} samples of busy Python threads; ms per request (of {cpu_ms:.2f} ms CPU) by function:"]
    lines.append("self:")
    for frame, c in sorted(self_count.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {c * per:6.3f}  {100 * c / total:5.1f}%  {frame}")
    lines.append("inclusive:")
    for frame, c in sorted(incl_count.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {c * per:6.3f}  {100 * c / total:5.1f}%  {frame}")
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
    parser.add_argument(
        "--sampler",
        choices=("perf", "py-spy"),
        default="perf",
        help="perf: CPU by shared object (native code included); py-spy: Python functions, self and inclusive",
    )
    args = parser.parse_args(argv)
    perf = shutil.which("perf")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.sampler == "perf" and perf is None:
        print("profile: needs perf (apt-get install linux-perf)", file=sys.stderr)
        return 2
    if args.sampler == "py-spy" and not Path(spy).exists():
        print("profile: needs py-spy (pip install py-spy)", file=sys.stderr)
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
        if args.sampler == "perf":
            data = workdir / f"{args.target}.perf.data"
            sampler = [
                *("taskset", "-c", "1", str(perf), "record", "-e", "cpu-clock", "-F", "499", "-p", str(server.pid)),
                *("-o", str(data), "--", "sleep", str(args.seconds)),
            ]
        else:
            data = workdir / f"{args.target}.py-spy.txt"
            sampler = [
                *("taskset", "-c", "1", spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds))),
                *("--rate", "250", "--format", "raw", "--nonblocking", "--output", str(data)),
            ]
        subprocess.run(sampler, capture_output=True, check=False)
        cpu = server.cpu_seconds() - cpu0
        driver.join()
        m = result["measurement"]
        req_s = m["completed"] / m["window_s"]
        cpu_ms = 1000 * cpu / (req_s * args.seconds)
        print(
            f"{args.target} (pid {server.pid}), {args.rows} rows x {args.concurrency} in flight: {req_s:,.0f} req/s, "
            f"{cpu_ms:.2f} ms CPU per request (while sampled)"
        )
        if args.sampler == "perf":
            report = subprocess.run(
                [str(perf), "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            print(summarize(parse_perf_report(report)), end="")
        else:
            print(summarize_stacks(data.read_text() if data.exists() else "", cpu_ms), end="")
        print(f"{args.sampler} data: {data}")
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
