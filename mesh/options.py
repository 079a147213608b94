"""The contract's custom options, as typed extension handles.

protoc's .pyi stubs declare every extension a plain `FieldDescriptor`; these are the same
objects, typed with the options they extend and the value they hold, so `Extensions[...]`
and `HasExtension(...)` type-check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf.descriptor_pb2 import FieldOptions, MethodOptions

from invmesh.api.v1 import access_pb2, limits_pb2, rest_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedScalarFieldContainer
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor

ACCESS = cast("_ExtensionFieldDescriptor[MethodOptions, access_pb2.Access]", access_pb2.access)
HTTP = cast("_ExtensionFieldDescriptor[MethodOptions, http_pb2.HttpRule]", annotations_pb2.http)
REST_RESPONSE = cast(
    "_ExtensionFieldDescriptor[MethodOptions, rest_pb2.RestResponse]", rest_pb2.rest_response
)
REST_STREAM = cast("_ExtensionFieldDescriptor[MethodOptions, rest_pb2.RestStream]", rest_pb2.rest_stream)
FIELD_BEHAVIOR = cast(
    "_ExtensionFieldDescriptor[FieldOptions, RepeatedScalarFieldContainer[field_behavior_pb2.FieldBehavior]]",
    field_behavior_pb2.field_behavior,
)
LIMITS = cast("_ExtensionFieldDescriptor[FieldOptions, limits_pb2.FieldLimits]", limits_pb2.limits)
