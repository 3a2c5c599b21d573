"""The serving benchmark's pure parts: percentiles, aggregation, ratios, verdicts, the table, option parsing,
the closed loop's window accounting and the request encodings. No server is started."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from benchmarks.serving import stats, targets, workload
from benchmarks.serving.loadgen import closed_loop_async, closed_loop_threads
from benchmarks.serving.stats import Cell, Row


def cell(
    target: str, req_s: float, latencies_ms: list[float], *, rows: int = 32, conc: int = 8, repeat: int = 0
) -> Cell:
    return Cell(
        target=target,
        rows=rows,
        concurrency=conc,
        repeat=repeat,
        completed=int(req_s * 2),
        errors=0,
        window_s=2.0,
        latencies_us=[int(v * 1000) for v in latencies_ms],
    )


# -- percentiles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear_interpolation(q: float) -> None:
    values = sorted(np.random.default_rng(3).exponential(5.0, size=1001).tolist())
    assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


# -- aggregation and ratios --------------------------------------------------------------------------------


def test_aggregate_means_throughput_and_pools_latencies_over_repeats() -> None:
    rows = stats.aggregate(
        [
            cell("kserve", 800, [10.0] * 99 + [20.0], repeat=0),
            cell("kserve", 1000, [12.0] * 100, repeat=1),
        ]
    )
    [row] = rows
    assert row.req_s == 900
    assert row.rows_s == 900 * 32
    assert row.runs_req_s == (800, 1000)
    assert row.spread == pytest.approx(200 / 900)
    assert row.p50_ms == pytest.approx(12.0)
    pooled = sorted([10.0] * 99 + [20.0] + [12.0] * 100)
    assert row.p99_ms == pytest.approx(stats.percentile(pooled, 99))


def test_ratios_compare_like_with_like() -> None:
    rows = stats.aggregate(
        [
            cell("raw", 2500, [0.4]),
            cell("kserve", 800, [10.0]),
            cell("recwatch", 2000, [4.0]),
            cell("recwatch", 5000, [0.2], rows=1),  # no kserve row at 1 x 8: no ratio
        ]
    )
    by = {(r.target, r.rows): r for r in rows}
    assert by[("recwatch", 32)].vs_kserve == pytest.approx(2.5)
    assert by[("recwatch", 32)].vs_raw == pytest.approx(0.8)
    assert by[("kserve", 32)].vs_kserve == pytest.approx(1.0)
    assert by[("recwatch", 1)].vs_kserve is None
    assert by[("recwatch", 1)].vs_raw is None


def test_cpu_per_request_divides_server_cpu_by_all_requests_of_the_run() -> None:
    runs = [
        Cell("kserve", 32, 8, 0, completed=1600, errors=0, window_s=2, server_cpu_s=2.0, total_completed=2000),
        Cell("kserve", 32, 8, 1, completed=1600, errors=0, window_s=2, server_cpu_s=1.0, total_completed=1000),
    ]
    [row] = stats.aggregate(runs)
    assert row.cpu_ms_per_req == pytest.approx(1.0)


# -- verdicts ----------------------------------------------------------------------------------------------


def _row(target: str, req_s: float, p99: float, rows: int = 32, conc: int = 8) -> Row:
    return Row(target, rows, conc, req_s=req_s, p50_ms=p99 / 2, p99_ms=p99, errors=0)


def test_speedup_verdict_needs_twice_the_throughput_and_no_worse_p99_in_every_cell() -> None:
    rows = [
        _row("kserve", 900, 13.0),
        _row("kserve", 1500, 1.0, rows=1),
        _row("recwatch", 1900, 5.0),  # 2.11x, lower p99: passes
        _row("recwatch", 3100, 1.2, rows=1),  # 2.07x but higher p99: fails
        _row("recwatch-nolog", 2000, 5.0),
    ]
    by = {v.name.split()[0]: v for v in stats.verdicts(rows)}
    assert by["recwatch"].passed is False
    assert by["recwatch"].failures == ("1x8: 2.07x, p99 1.2 vs 1.0 ms",)
    assert by["recwatch-nolog"].passed is True
    assert by["recwatch-batching"].passed is None  # not measured is not a pass


def test_under_load_verdict_takes_the_better_serving_config_per_cell_and_ignores_one_in_flight() -> None:
    rows = [
        _row("kserve", 700, 14.0),
        _row("recwatch", 900, 15.0),
        _row("recwatch-batching", 1500, 9.0),  # 2.14x at a lower p99: this cell passes
        _row("kserve", 750, 45.0, conc=32),
        _row("recwatch-batching", 1400, 20.0, conc=32),  # 1.87x: fails
        _row("recwatch-cache", 9000, 1.0, conc=32),  # the hit path does not count
        _row("kserve", 700, 1.5, conc=1),
        _row("recwatch", 720, 1.6, conc=1),  # one in flight: not part of this verdict
    ]
    [under] = [v for v in stats.verdicts(rows) if v.name.startswith("under load")]
    assert under.passed is False
    assert under.failures == (
        "32x8: recwatch-batching 2.14x, p99 9.0 vs 14.0 ms",
        "32x32: recwatch-batching 1.87x, p99 20.0 vs 45.0 ms",
    )
    assert under.detail == "1/2 cells"
    rows[4] = _row("recwatch-batching", 1600, 20.0, conc=32)
    [under] = [v for v in stats.verdicts(rows) if v.name.startswith("under load")]
    assert under.passed is True


def test_logging_cost_is_the_geometric_mean_of_per_cell_losses() -> None:
    rows = [
        _row("recwatch", 970, 5.0),
        _row("recwatch-nolog", 1000, 5.0),
        _row("recwatch", 1000, 1.0, rows=1),
        _row("recwatch-nolog", 1000, 1.0, rows=1),
    ]
    costs = stats.logging_costs(rows)
    assert costs == {(32, 8): pytest.approx(0.03), (1, 8): pytest.approx(0.0)}
    overall = stats.overall_logging_cost(costs)
    assert overall == pytest.approx(1 - math.sqrt(0.97))
    [logging] = [v for v in stats.verdicts(rows) if v.name.startswith("logging")]
    assert logging.passed is True
    rows[0] = _row("recwatch", 900, 5.0)
    [logging] = [v for v in stats.verdicts(rows) if v.name.startswith("logging")]
    assert logging.passed is False


def test_logging_verdict_is_skipped_without_both_rows() -> None:
    [logging] = [v for v in stats.verdicts([_row("recwatch", 970, 5.0)]) if v.name.startswith("logging")]
    assert logging.passed is None
    assert "SKIP" in stats.format_verdicts([logging])


# -- table -------------------------------------------------------------------------------------------------


def test_table_aligns_columns_and_prints_missing_values_as_dashes() -> None:
    rows = stats.aggregate([cell("kserve", 812.5, [9.5, 10.0, 13.0]), cell("recwatch-nolog", 1234.0, [4.0])])
    text = stats.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == [h for h in " ".join(stats.HEADER).split()]
    assert len({len(line) for line in lines}) == 1  # fixed width
    kserve = lines[2].split()
    assert kserve[:5] == ["kserve", "32", "8", "812", "26,000"]
    assert kserve[7] == "1.00x" and kserve[8] == "-"  # no raw row: no ratio
    assert "1.52x" in lines[3]


def test_table_flags_cells_where_other_processes_used_the_server_core() -> None:
    busy = Cell("kserve", 32, 8, 0, completed=100, errors=0, window_s=1, latencies_us=[1000], foreign_busy=0.4)
    quiet = Cell("mlserver", 32, 8, 0, completed=100, errors=0, window_s=1, latencies_us=[1000], foreign_busy=0.02)
    text = stats.format_table(stats.aggregate([busy, quiet]))
    assert "busy core 40%" in text
    assert text.count("busy core") == 1


def test_markdown_table_has_a_header_separator_and_one_line_per_row() -> None:
    rows = stats.aggregate([cell("kserve", 800, [10.0]), cell("raw", 2500, [0.4])])
    lines = stats.format_table(rows, markdown=True).splitlines()
    assert lines[0].startswith("| target |")
    assert set(lines[1]) <= set("|-:")
    assert len(lines) == 4


# -- options -----------------------------------------------------------------------------------------------


def test_parse_targets_keeps_order_and_drops_duplicates() -> None:
    assert targets.parse_targets(" kserve,raw , kserve") == ["kserve", "raw"]


def test_parse_targets_names_the_unknown_ones() -> None:
    with pytest.raises(ValueError, match="torchserve"):
        targets.parse_targets("raw,torchserve")
    with pytest.raises(ValueError):
        targets.parse_targets(" , ")


def test_every_default_target_is_defined() -> None:
    assert targets.parse_targets(",".join(targets.DEFAULT_TARGETS)) == list(targets.DEFAULT_TARGETS)


@pytest.mark.parametrize(("text", "expected"), [("1,8,32", [1, 8, 32]), ("32, 1,", [32, 1]), ("8,8", [8])])
def test_parse_positive_ints(text: str, expected: list[int]) -> None:
    assert targets.parse_positive_ints(text, "--concurrency") == expected


@pytest.mark.parametrize("text", ["0", "-1", "eight", ""])
def test_parse_positive_ints_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--rows"):
        targets.parse_positive_ints(text, "--rows")


def test_missing_flags_reads_argparse_help_including_usage_brackets() -> None:
    help_text = "usage: recwatch serve [-h] [--enable_batching]\n  --result_cache_bytes N   bytes\n"
    batching = targets.TARGETS["recwatch-batching"]
    cache = targets.TARGETS["recwatch-cache"]
    assert targets.missing_flags(batching, help_text) == ["--batching_parameters_file"]
    assert targets.missing_flags(cache, help_text) == ["--result_cache_models"]
    assert targets.missing_flags(targets.TARGETS["recwatch-nolog"], "--no-events-x") == ["--no-events"]


def test_run_parser_defaults_match_the_issue() -> None:
    from benchmarks.serving.run import build_parser

    args = build_parser().parse_args([])
    assert targets.parse_positive_ints(args.concurrency, "c") == [1, 8, 32]
    assert targets.parse_positive_ints(args.rows, "r") == [32, 1]
    assert args.repeat == 2
    assert set(targets.parse_targets(args.targets)) >= {"raw", "recwatch", "recwatch-nolog", "kserve", "mlserver"}


# -- the closed loop ---------------------------------------------------------------------------------------


def test_async_closed_loop_keeps_concurrency_in_flight_and_counts_only_the_window() -> None:
    in_flight = 0
    peak = 0

    async def send(worker: int, payload: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1

    m = asyncio.run(closed_loop_async(send, [1, 2, 3], concurrency=4, warmup_s=0.05, duration_s=0.2))
    assert peak == 4
    assert m.errors == 0
    assert m.window_s == pytest.approx(0.2)
    assert 0 < m.completed < m.total_completed  # warm-up completions are not counted
    assert len(m.latencies_us) == m.completed
    assert min(m.latencies_us) >= 5000


def test_closed_loop_counts_errors_with_a_sample_and_does_not_spin() -> None:
    calls = 0

    def send(payload: int) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async def send_async(worker: int, payload: int) -> None:
        send(payload)

    m = asyncio.run(closed_loop_async(send_async, [0], concurrency=2, warmup_s=0, duration_s=0.1))
    assert m.completed == 0 and m.errors > 0
    assert m.error_sample == "ConnectionError: refused"
    assert calls < 500  # each failure backs off 1 ms

    m = closed_loop_threads(send, [0], concurrency=2, warmup_s=0, duration_s=0.05)
    assert m.errors > 0 and m.completed == 0


# -- the requests ------------------------------------------------------------------------------------------


def test_pool_is_deterministic_and_ranking_requests_repeat_one_user() -> None:
    a, b = workload.make_pool(32, seed=1), workload.make_pool(32, seed=1)
    assert len(a) == workload.POOL_SIZE
    for x, y in zip(a, b, strict=True):
        for name in ("user_id", "item_id", "features"):
            np.testing.assert_array_equal(x[name], y[name])
    first = a[0]
    assert first["user_id"].shape == (32,) and len(set(first["user_id"].tolist())) == 1
    assert first["features"].shape == (32, workload.NUM_FEATURES) and first["features"].dtype == np.float32
    assert len({p["item_id"].tobytes() for p in a}) == workload.POOL_SIZE  # distinct requests


def test_v2_grpc_request_round_trips_through_the_runtime_descriptors() -> None:
    from benchmarks.serving.v2_proto import messages

    inputs = workload.make_pool(4)[0]
    parsed = messages()["ModelInferRequest"].FromString(workload.v2_grpc_bytes(inputs, "dcn"))
    assert parsed.model_name == "dcn"
    assert [(t.name, t.datatype, list(t.shape)) for t in parsed.inputs] == [
        ("user_id", "INT64", [4]),
        ("item_id", "INT64", [4]),
        ("features", "FP32", [4, 8]),
    ]
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_input_contents[1], np.int64), inputs["item_id"])

    response = messages()["ModelInferResponse"](model_name="dcn")
    response.outputs.add(name="scores", datatype="FP32", shape=[4])
    response.raw_output_contents.append(np.array([0.1, 0.2, 0.3, 0.4], np.float32).tobytes())
    np.testing.assert_allclose(workload.v2_grpc_scores(response.SerializeToString()), [0.1, 0.2, 0.3, 0.4])


def test_v2_rest_body_and_answer() -> None:
    inputs = workload.make_pool(2)[0]
    body = json.loads(workload.v2_rest_body(inputs))
    assert body["inputs"][2]["shape"] == [2, 8] and len(body["inputs"][2]["data"]) == 16
    answer = json.dumps({"outputs": [{"name": "scores", "shape": [2], "datatype": "FP32", "data": [0.5, 0.25]}]})
    np.testing.assert_allclose(workload.v2_rest_scores(answer.encode()), [0.5, 0.25])


def test_logging_cpu_cost_compares_cpu_per_request() -> None:
    rows = [
        Row("recwatch", 32, 8, req_s=900, p50_ms=1, p99_ms=2, errors=0, cpu_ms_per_req=1.1),
        Row("recwatch-nolog", 32, 8, req_s=1000, p50_ms=1, p99_ms=2, errors=0, cpu_ms_per_req=1.0),
    ]
    assert stats.logging_cpu_cost(rows) == pytest.approx(0.1)
    assert rows[1].capacity_req_s == pytest.approx(1000)
    assert stats.logging_cpu_cost(rows[:1]) is None


def test_table_notes_a_generator_that_may_be_the_bottleneck() -> None:
    busy = Cell("kserve", 1, 32, 0, completed=100, errors=0, window_s=1, latencies_us=[1000], generator_busy=0.93)
    assert "generator 93%" in stats.format_table(stats.aggregate([busy]))
