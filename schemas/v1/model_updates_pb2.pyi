from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelUpdate(_message.Message):
    __slots__ = ("update_id", "ts_us", "model", "kind", "version", "parent_version", "reason", "actor", "caused_by", "canary_weight", "metrics")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ModelUpdate.Kind]
        RETRAIN_REQUESTED: _ClassVar[ModelUpdate.Kind]
        DEPLOY_REQUESTED: _ClassVar[ModelUpdate.Kind]
        PROMOTE_REQUESTED: _ClassVar[ModelUpdate.Kind]
        ROLLBACK_REQUESTED: _ClassVar[ModelUpdate.Kind]
        TRAINING_STARTED: _ClassVar[ModelUpdate.Kind]
        TRAINING_PROGRESS: _ClassVar[ModelUpdate.Kind]
        TRAINING_FINISHED: _ClassVar[ModelUpdate.Kind]
        EVALUATED: _ClassVar[ModelUpdate.Kind]
        CANARY_DEPLOYED: _ClassVar[ModelUpdate.Kind]
        WEIGHT_CHANGED: _ClassVar[ModelUpdate.Kind]
        PROMOTED: _ClassVar[ModelUpdate.Kind]
        ROLLED_BACK: _ClassVar[ModelUpdate.Kind]
        REJECTED: _ClassVar[ModelUpdate.Kind]
    KIND_UNSPECIFIED: ModelUpdate.Kind
    RETRAIN_REQUESTED: ModelUpdate.Kind
    DEPLOY_REQUESTED: ModelUpdate.Kind
    PROMOTE_REQUESTED: ModelUpdate.Kind
    ROLLBACK_REQUESTED: ModelUpdate.Kind
    TRAINING_STARTED: ModelUpdate.Kind
    TRAINING_PROGRESS: ModelUpdate.Kind
    TRAINING_FINISHED: ModelUpdate.Kind
    EVALUATED: ModelUpdate.Kind
    CANARY_DEPLOYED: ModelUpdate.Kind
    WEIGHT_CHANGED: ModelUpdate.Kind
    PROMOTED: ModelUpdate.Kind
    ROLLED_BACK: ModelUpdate.Kind
    REJECTED: ModelUpdate.Kind
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    TS_US_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CAUSED_BY_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    ts_us: int
    model: str
    kind: ModelUpdate.Kind
    version: int
    parent_version: int
    reason: str
    actor: str
    caused_by: str
    canary_weight: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, update_id: _Optional[str] = ..., ts_us: _Optional[int] = ..., model: _Optional[str] = ..., kind: _Optional[_Union[ModelUpdate.Kind, str]] = ..., version: _Optional[int] = ..., parent_version: _Optional[int] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., caused_by: _Optional[str] = ..., canary_weight: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...
