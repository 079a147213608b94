from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
REST_RESPONSE_FIELD_NUMBER: _ClassVar[int]
rest_response: _descriptor.FieldDescriptor
REST_STREAM_FIELD_NUMBER: _ClassVar[int]
rest_stream: _descriptor.FieldDescriptor

class RestResponse(_message.Message):
    __slots__ = ("status", "location")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    status: int
    location: str
    def __init__(self, status: _Optional[int] = ..., location: _Optional[str] = ...) -> None: ...

class RestStream(_message.Message):
    __slots__ = ("event_id", "resume_from", "event_type", "events")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    resume_from: str
    event_type: str
    events: str
    def __init__(self, event_id: _Optional[str] = ..., resume_from: _Optional[str] = ..., event_type: _Optional[str] = ..., events: _Optional[str] = ...) -> None: ...
