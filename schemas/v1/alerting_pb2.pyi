from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Anomaly(_message.Message):
    __slots__ = ("anomaly_id", "ts_us", "metric", "model", "version", "label", "replica", "value", "score", "threshold", "detector")
    ANOMALY_ID_FIELD_NUMBER: _ClassVar[int]
    TS_US_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    anomaly_id: str
    ts_us: int
    metric: str
    model: str
    version: int
    label: str
    replica: str
    value: float
    score: float
    threshold: float
    detector: str
    def __init__(self, anomaly_id: _Optional[str] = ..., ts_us: _Optional[int] = ..., metric: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., replica: _Optional[str] = ..., value: _Optional[float] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., detector: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("fingerprint", "status", "severity", "labels", "annotations", "starts_at_us", "ends_at_us", "anomaly_ids")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Alert.Status]
        FIRING: _ClassVar[Alert.Status]
        RESOLVED: _ClassVar[Alert.Status]
    STATUS_UNSPECIFIED: Alert.Status
    FIRING: Alert.Status
    RESOLVED: Alert.Status
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_US_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_US_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_IDS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    status: Alert.Status
    severity: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    starts_at_us: int
    ends_at_us: int
    anomaly_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fingerprint: _Optional[str] = ..., status: _Optional[_Union[Alert.Status, str]] = ..., severity: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., starts_at_us: _Optional[int] = ..., ends_at_us: _Optional[int] = ..., anomaly_ids: _Optional[_Iterable[str]] = ...) -> None: ...
