from __future__ import annotations

import json
from pathlib import Path

import pytest

from recwatch.cli import build_parser, format_result, main
from recwatch.settings import ENV_VARS

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in ENV_VARS:
        assert name in out


def test_readme_documents_every_environment_variable() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [name for name in ENV_VARS if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_serve_takes_tensorflow_model_server_flag_names() -> None:
    args = build_parser().parse_args(["serve", "--model_name", "ranker", "--model_base_path", "/m", "--port", "9000"])
    assert (args.model_name, args.model_base_path, args.port) == ("ranker", Path("/m"), 9000)


def test_result_formats() -> None:
    columns, rows = ["model", "requests", "mean_us"], [("ranker", 120, 812.5), ("seq", 7, 0.125)]
    table = format_result(columns, rows, "table").splitlines()
    assert table[0].split() == columns
    assert table[2].split() == ["ranker", "120", "812.5"]
    assert table[-1] == "(2 rows)"
    assert format_result(columns, rows, "csv").splitlines() == [
        "model,requests,mean_us",
        "ranker,120,812.5",
        "seq,7,0.125",
    ]
    assert [json.loads(line) for line in format_result(columns, rows, "json").splitlines()] == [
        {"model": "ranker", "requests": 120, "mean_us": 812.5},
        {"model": "seq", "requests": 7, "mean_us": 0.125},
    ]


def test_detect_scores_every_row_of_a_nab_csv_and_refuses_an_unknown_detector(tmp_path: Path) -> None:
    rows = ["timestamp,value"] + [
        f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{1.0 + (i % 7) * 0.01}" for i in range(400)
    ]
    rows[350] = "2024-01-01 00:05:49,50.0"  # data row 349: a spike after the warm-up
    source = tmp_path / "series.csv"
    source.write_text("\n".join(rows) + "\n")
    out = tmp_path / "scores.csv"

    assert main(["detect", "--input", str(source), "--output", str(out)]) == 0

    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score" and len(lines) == len(rows)
    scores = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[349] == max(scores[200:])  # the spike (data row 349) scores highest after the warm-up
    with pytest.raises(SystemExit, match="unknown detector"):
        main(["detect", "--input", str(source), "--output", str(out), "--detector", "nope"])
