"""Online anomaly detection for one numeric series at a time (River-based), and NAB-style CSV scoring.

Import-light: River is imported only when a detector that uses it is built.
"""

from detection.detectors import DETECTORS, Detector, make_detector
from detection.nab_csv import detect_file

__all__ = ["DETECTORS", "Detector", "detect_file", "make_detector"]
