from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
LIMITS_FIELD_NUMBER: _ClassVar[int]
limits: _descriptor.FieldDescriptor

class FieldLimits(_message.Message):
    __slots__ = ("min_length", "max_length", "minimum", "maximum", "pattern", "format")
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    min_length: int
    max_length: int
    minimum: int
    maximum: int
    pattern: str
    format: str
    def __init__(self, min_length: _Optional[int] = ..., max_length: _Optional[int] = ..., minimum: _Optional[int] = ..., maximum: _Optional[int] = ..., pattern: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...
