"""NAB (Numenta Anomaly Benchmark) evaluation: the NAB scorer and a corpus runner.

``python -m benchmarks.nab [--detector NAME] [--data DIR] [--jobs 2] [--json]``.
"""

from benchmarks.nab.scoring import PROFILES, CostProfile, FileResult, score_corpus

__all__ = ["PROFILES", "CostProfile", "FileResult", "score_corpus"]
