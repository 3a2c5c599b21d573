"""The contract between recwatch's parts: Protobuf messages (``schemas/v1/*.proto``) and topic names.

Import the generated classes from here::

    from schemas import InferenceEvent
    event = InferenceEvent.FromString(message_value)
"""

from schemas import topics
from schemas.v1.alerting_pb2 import Alert, Anomaly
from schemas.v1.feedback_pb2 import FeedbackEvent
from schemas.v1.inference_pb2 import InferenceEvent, Latency, OutputSummary, TensorSummary
from schemas.v1.metrics_pb2 import WindowAggregate
from schemas.v1.model_updates_pb2 import ModelUpdate

__all__ = [
    "Alert",
    "Anomaly",
    "FeedbackEvent",
    "InferenceEvent",
    "Latency",
    "ModelUpdate",
    "OutputSummary",
    "TensorSummary",
    "WindowAggregate",
    "topics",
]
