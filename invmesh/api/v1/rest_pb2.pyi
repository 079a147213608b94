from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
REST_RESPONSE_FIELD_NUMBER: _ClassVar[int]
rest_response: _descriptor.FieldDescriptor

class RestResponse(_message.Message):
    __slots__ = ("status", "location")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    status: int
    location: str
    def __init__(self, status: _Optional[int] = ..., location: _Optional[str] = ...) -> None: ...
