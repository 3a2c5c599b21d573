"""Writing a model version atomically, and the parts of ``python -m training`` that need no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.__main__ import build_parser, main
from training.errors import VersionExistsError
from training.export import version_exists, write_version
from training.report import Row, format_table


def test_a_version_appears_only_when_completely_written(tmp_path: Path) -> None:
    def write(staging: Path) -> None:
        assert not (tmp_path / "m" / "3").exists()  # nothing visible while writing
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"x")

    path = write_version(tmp_path, "m", 3, write)
    assert path == tmp_path / "m" / "3"
    assert version_exists(tmp_path, "m", 3)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["3"]
    with pytest.raises(VersionExistsError):
        write_version(tmp_path, "m", 3, write)


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "half").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_version(tmp_path, "m", 1, write)
    assert list((tmp_path / "m").iterdir()) == []


def test_train_reuses_an_existing_version_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ranker" / "2").mkdir(parents=True)
    (tmp_path / "ranker" / "2" / "saved_model.pb").write_bytes(b"x")
    args = ["train", "--model", "ctr", "--data", "synthetic", "--base-path", str(tmp_path), "--model-name", "ranker"]
    assert main([*args, "--version", "2", "--reuse"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert main([*args, "--version", "2"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_train_rejects_unknown_models_and_reports_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "gbdt", "--data", "x", "--base-path", "/m"])
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,userbehavior,file\n")
    assert main(["train", "--model", "ctr", "--data", str(bad), "--base-path", str(tmp_path)]) == 1
    assert "no valid UserBehavior row" in capsys.readouterr().err


def test_report_table_shows_dashes_for_missing_metrics() -> None:
    rows = [Row("popularity", None, 10, 5, 0.5, 0.25, 0.125, None), Row("sasrec", 1234, 7, 5, None, 0.5, 0.25, 1.25)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "model",
        "params",
        "train",
        "rows",
        "holdout",
        "rows",
        "AUC",
        "HitRate@10",
        "NDCG@10",
        "train",
        "s",
    ]
    assert lines[2].split() == ["popularity", "-", "10", "5", "0.5000", "0.2500", "0.1250", "-"]
    assert lines[3].split() == ["sasrec", "1,234", "7", "5", "-", "0.5000", "0.2500", "1.2"]
