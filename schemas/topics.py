"""Kafka topic names. The suffix is the schema's major version: a breaking change gets a new topic."""

from __future__ import annotations

from typing import Final

INFERENCE: Final = "recwatch.inference.v1"
"""InferenceEvent, one per request, key = request_id."""
FEEDBACK: Final = "recwatch.feedback.v1"
"""FeedbackEvent from the shop (impression, click, cart, fav, buy), key = request_id."""
METRICS: Final = "recwatch.metrics.v1"
"""WindowAggregate per closed window, key = model/version."""
ANOMALIES: Final = "recwatch.anomalies.v1"
"""Anomaly, key = metric series."""
ALERTS: Final = "recwatch.alerts.v1"
"""Alert (firing and resolved), key = alert fingerprint."""
MODEL_UPDATES: Final = "recwatch.model-updates.v1"
"""ModelUpdate commands and status events, key = model."""
DEAD_LETTER: Final = "recwatch.dead-letter.v1"
"""Undecodable or invalid input, raw bytes with the reason in headers."""

REPLAYED_HEADER: Final = "recwatch-replayed"
"""Header of an inference event a model server sends again from its spool (Kafka was down or did not acknowledge
it). Such a record may be a copy of one Kafka already has: the worker checks it by event_id (and only it)."""

ALL: Final = (INFERENCE, FEEDBACK, METRICS, ANOMALIES, ALERTS, MODEL_UPDATES, DEAD_LETTER)
