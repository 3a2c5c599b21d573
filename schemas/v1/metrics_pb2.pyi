from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WindowAggregate(_message.Message):
    __slots__ = ("window_start_us", "window_end_us", "model", "version", "label", "replica", "requests", "errors", "errors_by_status", "throughput_rps", "latency_p50_us", "latency_p90_us", "latency_p95_us", "latency_p99_us", "latency_max_us", "latency_mean_us", "latency_sketch", "queue_mean_us", "compute_mean_us", "batch_size_mean", "cache_hit_rate", "score_mean", "score_std", "score_histogram", "late_events", "process_rss_max_bytes")
    class ErrorsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    WINDOW_START_US_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MAX_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEAN_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SKETCH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MEAN_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MEAN_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_MEAN_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_MEAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_STD_FIELD_NUMBER: _ClassVar[int]
    SCORE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    LATE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_RSS_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    window_start_us: int
    window_end_us: int
    model: str
    version: int
    label: str
    replica: str
    requests: int
    errors: int
    errors_by_status: _containers.ScalarMap[int, int]
    throughput_rps: float
    latency_p50_us: float
    latency_p90_us: float
    latency_p95_us: float
    latency_p99_us: float
    latency_max_us: float
    latency_mean_us: float
    latency_sketch: bytes
    queue_mean_us: float
    compute_mean_us: float
    batch_size_mean: float
    cache_hit_rate: float
    score_mean: float
    score_std: float
    score_histogram: _containers.RepeatedScalarFieldContainer[int]
    late_events: int
    process_rss_max_bytes: float
    def __init__(self, window_start_us: _Optional[int] = ..., window_end_us: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., replica: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., errors_by_status: _Optional[_Mapping[int, int]] = ..., throughput_rps: _Optional[float] = ..., latency_p50_us: _Optional[float] = ..., latency_p90_us: _Optional[float] = ..., latency_p95_us: _Optional[float] = ..., latency_p99_us: _Optional[float] = ..., latency_max_us: _Optional[float] = ..., latency_mean_us: _Optional[float] = ..., latency_sketch: _Optional[bytes] = ..., queue_mean_us: _Optional[float] = ..., compute_mean_us: _Optional[float] = ..., batch_size_mean: _Optional[float] = ..., cache_hit_rate: _Optional[float] = ..., score_mean: _Optional[float] = ..., score_std: _Optional[float] = ..., score_histogram: _Optional[_Iterable[int]] = ..., late_events: _Optional[int] = ..., process_rss_max_bytes: _Optional[float] = ...) -> None: ...
