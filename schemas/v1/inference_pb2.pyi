from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Latency(_message.Message):
    __slots__ = ("queue_us", "batch_us", "compute_us", "total_us")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    batch_us: int
    compute_us: int
    total_us: int
    def __init__(self, queue_us: _Optional[int] = ..., batch_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., total_us: _Optional[int] = ...) -> None: ...

class TensorSummary(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class OutputSummary(_message.Message):
    __slots__ = ("name", "count", "mean", "min", "max", "head")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    mean: float
    min: float
    max: float
    head: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., mean: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., head: _Optional[_Iterable[float]] = ...) -> None: ...

class ProducerTotals(_message.Message):
    __slots__ = ("dropped", "spooled")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    spooled: int
    def __init__(self, dropped: _Optional[int] = ..., spooled: _Optional[int] = ...) -> None: ...

class InferenceEvent(_message.Message):
    __slots__ = ("event_id", "request_id", "received_us", "sent_us", "model", "version", "label", "replica", "api", "signature", "status_code", "error", "latency", "batch_size", "cache_hit", "rows", "inputs", "outputs", "user_id", "item_ids", "producer", "process_rss_bytes")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_US_FIELD_NUMBER: _ClassVar[int]
    SENT_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    PROCESS_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    request_id: str
    received_us: int
    sent_us: int
    model: str
    version: int
    label: str
    replica: str
    api: str
    signature: str
    status_code: int
    error: str
    latency: Latency
    batch_size: int
    cache_hit: bool
    rows: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSummary]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputSummary]
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    producer: ProducerTotals
    process_rss_bytes: int
    def __init__(self, event_id: _Optional[str] = ..., request_id: _Optional[str] = ..., received_us: _Optional[int] = ..., sent_us: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., replica: _Optional[str] = ..., api: _Optional[str] = ..., signature: _Optional[str] = ..., status_code: _Optional[int] = ..., error: _Optional[str] = ..., latency: _Optional[_Union[Latency, _Mapping]] = ..., batch_size: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., rows: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorSummary, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[OutputSummary, _Mapping]]] = ..., user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., producer: _Optional[_Union[ProducerTotals, _Mapping]] = ..., process_rss_bytes: _Optional[int] = ...) -> None: ...
