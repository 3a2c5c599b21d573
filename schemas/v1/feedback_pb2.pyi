from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackEvent(_message.Message):
    __slots__ = ("event_id", "request_id", "user_id", "item_id", "category_id", "behavior", "ts_us")
    class Behavior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BEHAVIOR_UNSPECIFIED: _ClassVar[FeedbackEvent.Behavior]
        IMPRESSION: _ClassVar[FeedbackEvent.Behavior]
        CLICK: _ClassVar[FeedbackEvent.Behavior]
        CART: _ClassVar[FeedbackEvent.Behavior]
        FAV: _ClassVar[FeedbackEvent.Behavior]
        BUY: _ClassVar[FeedbackEvent.Behavior]
    BEHAVIOR_UNSPECIFIED: FeedbackEvent.Behavior
    IMPRESSION: FeedbackEvent.Behavior
    CLICK: FeedbackEvent.Behavior
    CART: FeedbackEvent.Behavior
    FAV: FeedbackEvent.Behavior
    BUY: FeedbackEvent.Behavior
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    TS_US_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    request_id: str
    user_id: str
    item_id: str
    category_id: str
    behavior: FeedbackEvent.Behavior
    ts_us: int
    def __init__(self, event_id: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., category_id: _Optional[str] = ..., behavior: _Optional[_Union[FeedbackEvent.Behavior, str]] = ..., ts_us: _Optional[int] = ...) -> None: ...
