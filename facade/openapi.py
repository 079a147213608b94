"""The OpenAPI 3.1 document, from the same bindings that build the router.

Nothing here is written per route: paths, parameters, bodies, statuses and schemas all come
from the `Binding`s and their descriptors, so the document cannot drift from what is served.

Conventions, matching what the facade does:

- JSON names are the proto field names (snake_case), as the facade prints them; requests
  also accept the lowerCamelCase form, which the document does not list.
- Responses print every field without presence, so those are `required` in response schemas;
  `optional` fields, singular messages and oneof members may be absent. OUTPUT_ONLY fields are
  `readOnly`. Request schemas are separate (`<Message>Input`): `required` follows
  `google.api.field_behavior = REQUIRED`, and unknown fields are refused (`additionalProperties: false`).
  They carry the field's `invmesh.api.v1.limits` as JSON Schema keywords; an optional field may be
  null (proto3 JSON's default), a oneof whose members are REQUIRED takes exactly one (`oneOf`), and
  a PATCH that infers its update mask takes any of the body's fields (`<Message>Patch`).
- 64-bit integers are strings (proto3 JSON), enums are their value names.
- Path templates: literal segments stay literal and each wildcard segment (`*` or `**`) is one
  path parameter. `{id}` is `{id}`, `{product.id}` a parameter named `product.id`. A variable
  over several segments, such as `{name=shelves/*}`, shows its literal segments in the path and
  names its wildcards after the field (`/shelves/{name}`; `name_1`, `name_2`, … when it has
  several); the parameter's description says what the field receives (`shelves/{name}`). A `**`
  parameter spans the rest of the path: send its `/` unescaped. A wildcard bound to no field is
  named `_N` after its segment position. Templates that differ only in variable names share one
  OpenAPI path, named after the first binding, as they share one route.
- Errors are one `Status` schema, `{"code", "message", "details"}`.
- A server-streaming RPC answers `text/event-stream` or `application/x-ndjson` (facade/streaming.py);
  the NDJSON schema is that of one line, `{"result": …}` holding an event (the message, or an
  element of the field `rest_stream.events` names) or a last `{"error": …}`, and a
  `Last-Event-ID` header parameter sets the field `rest_stream.resume_from` names.
- Descriptions are the protos' comments (`invmesh/comments.json`, written by `make protos`), as
  protoc-gen-openapiv2 uses them: an operation's `summary` is the first sentence of its RPC's
  comment and its `description` the whole comment; services describe their tags, messages their
  schemas, and fields their properties and parameters.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.rpc import error_details_pb2

from facade import httprule, streaming
from facade.transcoding import HTTP_METHODS, Binding, is_required, query_fields
from mesh.access import declared_access, declared_role, is_public, role_name
from mesh.messages import descriptor
from mesh.options import FIELD_BEHAVIOR, HTTP, LIMITS

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearer"
STATUS_SCHEMA = "Status"
_REF = "#/components/schemas/"
_OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY
_INT64_PATTERN = "^-?[0-9]+$"
_UINT64_PATTERN = "^[0-9]+$"
_T = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_INT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _T.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _T.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    _T.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
    _T.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WRAPPERS = {
    "google.protobuf.DoubleValue": _T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _T.TYPE_FLOAT,
    "google.protobuf.Int64Value": _T.TYPE_INT64,
    "google.protobuf.UInt64Value": _T.TYPE_UINT64,
    "google.protobuf.Int32Value": _T.TYPE_INT32,
    "google.protobuf.UInt32Value": _T.TYPE_UINT32,
    "google.protobuf.BoolValue": _T.TYPE_BOOL,
    "google.protobuf.StringValue": _T.TYPE_STRING,
    "google.protobuf.BytesValue": _T.TYPE_BYTES,
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
}
_WELL_KNOWN.update({name: _SCALARS[kind] for name, kind in _WRAPPERS.items()})
_REQUEST_ID_REF = "#/components/headers/X-Request-Id"
COMMENTS_FILE = "comments.json"  # in the generated `invmesh` package
_SENTENCE = re.compile(r"(.+?[.!?])(?=\s|$)")
_Described = ServiceDescriptor | MethodDescriptor | Descriptor | FieldDescriptor
_TYPE_URL = "type.googleapis.com/"
# The detail types of our errors (mesh.errors and facade.errors send no others).
_DETAILS = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)
_ERRORS = {
    400: (
        "BadRequest",
        "The request is malformed or invalid (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`).",
    ),
    401: ("Unauthenticated", "No valid credentials (`UNAUTHENTICATED`)."),
    403: ("PermissionDenied", "The caller may not do this (`PERMISSION_DENIED`)."),
    404: ("NotFound", "No such resource or route (`NOT_FOUND`)."),
    409: ("Conflict", "A conflict with the current state (`ALREADY_EXISTS`, `ABORTED`)."),
    413: ("PayloadTooLarge", "The request body is over the size limit."),
    415: ("UnsupportedMediaType", "The request body is declared as something other than JSON."),
    429: ("TooManyRequests", "Too many requests, or a quota is spent (`RESOURCE_EXHAUSTED`)."),
    500: ("InternalError", "An internal error; no detail is disclosed."),
    503: ("Unavailable", "The backend service is unavailable; try again shortly (`UNAVAILABLE`)."),
    504: ("GatewayTimeout", "The backend service did not answer in time (`DEADLINE_EXCEEDED`)."),
}


def openapi_path(template: httprule.PathTemplate) -> str:
    """The OpenAPI path of an HttpRule template (see the module docstring)."""
    return _PathShape.of(template).path


def contract_comments() -> dict[str, str]:
    """The protos' comments by full name, as `make protos` wrote them beside the generated code."""
    text = resources.files("invmesh").joinpath(COMMENTS_FILE).read_text(encoding="utf-8")
    found: dict[str, str] = json.loads(text)
    return found


def openapi_document(
    bindings: Sequence[Binding],
    *,
    comments: Mapping[str, str] | None = None,
    pages: Collection[tuple[str, str]] = (),
    title: str = "invmesh",
    version: str = "1",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing every binding, with `comments` (full name → the
    proto comment) as descriptions; `pages` are the (HTTP method, RPC) whose answers a browser
    gets as an HTML page."""
    schemas = _Schemas(comments or {})
    paths: dict[str, dict[str, Any]] = {}
    shapes = _path_shapes(bindings)
    tags: dict[str, dict[str, str]] = {}
    for binding in bindings:
        shape = shapes[binding.template.shape]
        item = paths.setdefault(shape.path, {})
        method = binding.http_method.lower()
        if method not in HTTP_METHODS:
            raise ValueError(f"{binding.method.full_name}: {binding.http_method} cannot be described")
        item[method] = _operation(binding, shape, schemas)
        if (binding.http_method, binding.method.full_name) in pages:
            _add_html_page(item[method])
        tags.setdefault(
            binding.service.name, schemas.described({"name": binding.service.name}, binding.service)
        )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "REST bindings of the invmesh gRPC services, transcoded per their `google.api.http` "
                "rules. JSON field names are the proto field names (snake_case); requests also accept "
                "lowerCamelCase. 64-bit integers are strings. Every error is a `Status`."
            ),
        },
        "tags": list(tags.values()),
        "paths": paths,
        "components": {
            "schemas": schemas.components(),
            "responses": _error_components(),
            "headers": {
                "X-Request-Id": {
                    "description": "The request's id: the client's `X-Request-Id`, or a new one.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from `POST /users/login` or `POST /users/refresh`.",
                }
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }


@dataclass(frozen=True, slots=True)
class _Wildcard:
    index: int  # segment position
    name: str  # the OpenAPI parameter name
    double: bool  # `**`


@dataclass(frozen=True, slots=True)
class _PathShape:
    """An OpenAPI path and its parameters, one per wildcard segment of a template."""

    path: str
    wildcards: tuple[_Wildcard, ...]

    @classmethod
    def of(cls, template: httprule.PathTemplate, rest_suffix: str = "") -> _PathShape:
        parts: list[str] = []
        wildcards: list[_Wildcard] = []
        owners = {i: v for v in template.variables for i in range(v.start, v.end)}
        for index, segment in enumerate(template.segments):
            if segment.kind is httprule.Kind.LITERAL:
                parts.append(segment.literal)
                continue
            variable = owners.get(index)
            if variable is None:
                name = f"_{index + 1}"
            elif _wildcard_count(template, variable) == 1:
                name = variable.name
            else:
                name = f"{variable.name}_{_wildcard_ordinal(template, variable, index)}"
            double = segment.kind is httprule.Kind.DOUBLE_STAR
            name += rest_suffix if double else ""
            wildcards.append(_Wildcard(index, name, double))
            parts.append("{" + name + "}")
        path = "/" + "/".join(parts)
        if template.verb:
            path += ":" + template.verb
        return cls(path, tuple(wildcards))


def _path_shapes(bindings: Sequence[Binding]) -> dict[tuple[object, ...], _PathShape]:
    """The OpenAPI path of each route shape, named after its first binding (as the router does).
    `/a/{x}` and `/a/{x=**}` are two routes: the `**` one's parameter becomes `x_rest`."""
    templates: dict[tuple[object, ...], httprule.PathTemplate] = {}
    for binding in bindings:
        templates.setdefault(binding.template.shape, binding.template)
    shapes = {key: _PathShape.of(template) for key, template in templates.items()}
    taken = Counter(shape.path for shape in shapes.values())
    for key, shape in shapes.items():
        if taken[shape.path] > 1 and any(w.double for w in shape.wildcards):
            shapes[key] = _PathShape.of(templates[key], rest_suffix="_rest")
    return shapes


def _wildcard_count(template: httprule.PathTemplate, variable: httprule.Variable) -> int:
    return sum(
        template.segments[i].kind is not httprule.Kind.LITERAL for i in range(variable.start, variable.end)
    )


def _wildcard_ordinal(template: httprule.PathTemplate, variable: httprule.Variable, index: int) -> int:
    return sum(
        template.segments[i].kind is not httprule.Kind.LITERAL for i in range(variable.start, index + 1)
    )


def _operation(binding: Binding, shape: _PathShape, schemas: _Schemas) -> dict[str, Any]:
    method = binding.method
    public = is_public(binding.grpc_path)
    comment = schemas.comment(method)
    operation: dict[str, Any] = {
        "operationId": _operation_id(binding),
        "summary": _first_sentence(comment) or method.name,
        "description": (f"{comment}\n\n" if comment else "")
        + f"Calls `{method.full_name}`."
        + _role_note(method),
        "tags": [binding.service.name],
        "parameters": [
            *_path_parameters(binding, shape, schemas),
            *_query_parameters(binding, schemas),
            *_header_parameters(binding, schemas),
        ],
    }
    if public:
        operation["security"] = []
    if binding.body:
        operation["requestBody"] = _request_body(binding, schemas)
    operation["responses"] = {
        str(binding.status): _success_response(binding, schemas),
        **_error_responses(binding, public),
    }
    return operation


def _add_html_page(operation: dict[str, Any]) -> None:
    """Every answer of `operation` may also be a `text/html` page, for a client that prefers one."""
    operation["description"] += (
        " A client that prefers `text/html` to JSON (a browser opening a link) gets a small HTML page "
        "instead, with the same status."
    )
    html = {"text/html": {"schema": {"type": "string"}}}
    for status, response in operation["responses"].items():
        if "$ref" in response:  # a shared error response: this one's is its own
            name = response["$ref"].rsplit("/", 1)[1]
            response = {**_error_components()[name]}
        if "content" in response:  # not a 204
            response["content"] = {**response["content"], **html}
        operation["responses"][status] = response


def _role_note(method: MethodDescriptor) -> str:
    role = declared_role(method)
    services = " (or a service token)" if declared_access(method).service else ""
    return f" Needs the `{role_name(role)}` role{services}." if role else ""


def _operation_id(binding: Binding) -> str:
    """`Service_Method`; an RPC's additional bindings add their position: `Service_Method_2`."""
    base = f"{binding.service.name}_{binding.method.name}"
    rule = binding.method.GetOptions().Extensions[HTTP]
    for position, each in enumerate((rule, *rule.additional_bindings), start=1):
        kind = each.WhichOneof("pattern")
        if kind == "custom":
            method, text = each.custom.kind.upper(), each.custom.path
        else:
            method, text = str(kind).upper(), getattr(each, str(kind))
        if method == binding.http_method and text == binding.template.text:
            return base if position == 1 else f"{base}_{position}"
    return base


def _path_parameters(binding: Binding, shape: _PathShape, schemas: _Schemas) -> list[dict[str, Any]]:
    template = binding.template
    owners = {i: v for v in template.variables for i in range(v.start, v.end)}
    request = descriptor(binding.request_class)
    names = {w.index: w.name for w in shape.wildcards}
    parameters = []
    for wildcard in shape.wildcards:
        variable = owners.get(wildcard.index)
        if variable is None:
            schema: dict[str, Any] = {"type": "string"}
            text = "Any value; bound to no field."
            comment = ""
        else:
            leaf = _field_at(request, variable.field_path)
            schema = schemas.scalar(leaf, request=True)
            value = "/".join(
                "{" + names[i] + "}" if i in names else template.segments[i].literal
                for i in range(variable.start, variable.end)
            )
            text = f"Sets `{variable.name}`"
            text += "." if value == "{" + wildcard.name + "}" else f" to `{value}`."
            comment = schemas.comment(leaf)
            if schema.get("type") == "string":
                schema = {**schema, "minLength": 1}
        if wildcard.double:
            schema = {k: v for k, v in schema.items() if k != "pattern"}
            text += " Spans the rest of the path: send its `/` unescaped."
        if comment:
            text += f" {comment}"
        parameters.append(
            {"name": wildcard.name, "in": "path", "required": True, "description": text, "schema": schema}
        )
    return parameters


def _query_parameters(binding: Binding, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters = []
    for dotted, leaf in query_fields(binding):
        parameter: dict[str, Any] = schemas.described({"name": dotted, "in": "query"}, leaf)
        parameter["schema"] = schemas.field(leaf, request=True)
        if leaf.is_repeated:
            parameter.update(style="form", explode=True)
        if "." not in dotted and is_required(leaf):
            parameter["required"] = True
        parameters.append(parameter)
    return parameters


def _header_parameters(binding: Binding, schemas: _Schemas) -> list[dict[str, Any]]:
    if binding.stream is None or not binding.stream.resume_from:
        return []
    field = binding.stream.resume_from
    leaf = descriptor(binding.request_class).fields_by_name[field]
    text = (
        f"Sets `{field}`, and wins over the query parameter: an EventSource sends it on "
        "reconnecting, with the `id` of the last event it received."
    )
    return [
        {
            "name": "Last-Event-ID",
            "in": "header",
            "description": text,
            "schema": schemas.field(leaf, request=True),
        }
    ]


def _request_body(binding: Binding, schemas: _Schemas) -> dict[str, Any]:
    request = descriptor(binding.request_class)
    if binding.body == "*":
        top = {path.split(".")[0] for path in binding.path_fields if "." not in path}
        schema = schemas.message(request, request=True, leave_out=frozenset(top))
        required = any(is_required(f) for f in request.fields if f.name not in top)
    else:
        leaf = request.fields_by_name[binding.body]
        patched = binding.masked_body
        schema = schemas.patch(patched) if patched else schemas.field(leaf, request=True)
        required = is_required(leaf)
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _success_response(binding: Binding, schemas: _Schemas) -> dict[str, Any]:
    description = _REASONS.get(binding.status, "Success.")
    response: dict[str, Any] = {"description": description, "headers": _headers()}
    if binding.status == 204:
        return response
    reply = descriptor(binding.response_class)
    if binding.response_body:
        schema = schemas.field(reply.fields_by_name[binding.response_body], request=False)
    elif binding.stream is not None and binding.stream.events:  # each element is an event
        event = reply.fields_by_name[binding.stream.events].message_type
        assert event is not None  # bindings() checked it
        schema = schemas.message(event, request=False)
    else:
        schema = schemas.message(reply, request=False)
    if binding.stream is not None:
        response["description"] = _STREAMED
        response["content"] = {
            streaming.SSE: {"schema": {"type": "string"}},
            streaming.NDJSON: {"schema": _ndjson_line(schema)},
        }
        return response
    response["content"] = {"application/json": {"schema": schema}}
    if binding.location:
        response["headers"]["Location"] = {
            "description": f"The new resource: `{binding.location}`.",
            "required": True,
            "schema": {"type": "string", "format": "uri-reference"},
        }
    return response


_REASONS = {200: "OK.", 201: "Created.", 202: "Accepted.", 204: "Done; no content."}
_STREAMED = (
    "A stream of events, until the call ends, fails or the client leaves; an error before the first "
    "event is an error status. With `Accept: text/event-stream`, Server-Sent Events: `id` and `event` "
    "per the RPC's `rest_stream` option, `data` the event's JSON, and an `error` event with a `Status` "
    "ending a stream that fails. Otherwise newline-delimited JSON, one object a line: `result` holding an "
    "event, or `error` holding the `Status` that ended the stream."
)


def _ndjson_line(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"result": result, "error": {"$ref": _REF + STATUS_SCHEMA}},
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    }


def _headers() -> dict[str, Any]:
    return {"X-Request-Id": {"$ref": _REQUEST_ID_REF}}


def _error_responses(binding: Binding, public: bool) -> dict[str, Any]:
    statuses = [400, 401, 404, 409, 429, 500, 503, 504]
    if not public:
        statuses.append(403)
    if binding.body:
        statuses.extend((413, 415))
    return {
        str(status): {"$ref": "#/components/responses/" + _ERRORS[status][0]} for status in sorted(statuses)
    }


def _error_components() -> dict[str, Any]:
    responses = {}
    for status, (name, text) in _ERRORS.items():
        headers: dict[str, Any] = {"X-Request-Id": {"$ref": _REQUEST_ID_REF}}
        if status == 401:
            headers["WWW-Authenticate"] = {
                "description": "The bearer challenge (RFC 6750).",
                "required": True,
                "schema": {"type": "string"},
            }
        if status in (429, 503):
            headers["Retry-After"] = {
                "description": "Seconds to wait before retrying, when the backend says.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        responses[name] = {
            "description": text,
            "headers": headers,
            "content": {"application/json": {"schema": {"$ref": _REF + STATUS_SCHEMA}}},
        }
    return responses


class _Schemas:
    """components/schemas, filled as operations reference messages."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self._comments = comments
        self._defined: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}  # message full name -> short name in use
        self._defined[STATUS_SCHEMA] = _status_schema([self._error_detail(descriptor(d)) for d in _DETAILS])

    def components(self) -> dict[str, Any]:
        return dict(sorted(self._defined.items()))

    def message(
        self, message: Descriptor, *, request: bool, leave_out: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """A message's schema: a $ref to its component, or inline when fields are left out."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if leave_out:
            return self._object(message, request=request, leave_out=leave_out)
        name = self._component_name(message) + ("Input" if request else "")
        if name not in self._defined:
            self._defined[name] = {}  # reserved first: messages may be recursive
            self._defined[name] = self._object(message, request=request, leave_out=frozenset())
        return {"$ref": _REF + name}

    def patch(self, message: Descriptor) -> dict[str, Any]:
        """A PATCH body: any of the message's fields, each replacing its value; the rest stay."""
        name = self._component_name(message) + "Patch"
        if name not in self._defined:
            self._defined[name] = self._object(message, request=True, leave_out=frozenset())
            self._defined[name].pop("required", None)
        return {"$ref": _REF + name}

    def comment(self, element: _Described | None) -> str:
        """The proto comment of a service, method, message or field ("" for none)."""
        return self._comments.get(element.full_name, "") if element is not None else ""

    def described(self, node: dict[str, Any], element: _Described | None) -> dict[str, Any]:
        """`node` with the element's comment as its description, if it has one."""
        comment = self.comment(element)
        return _annotate(node, description=comment) if comment else node

    def _error_detail(self, message: Descriptor) -> dict[str, Any]:
        """A detail of an error: the message packed in a `google.protobuf.Any`, printed as resources are."""
        name = self._component_name(message)
        schema = self._object(message, request=False, leave_out=frozenset())
        schema["properties"] = {"@type": {"const": _TYPE_URL + message.full_name}, **schema["properties"]}
        schema["required"] = ["@type", *schema.get("required", [])]
        self._defined[name] = schema
        return {"$ref": _REF + name}

    def field(self, leaf: FieldDescriptor, *, request: bool) -> dict[str, Any]:
        if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
            value = leaf.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value, request=request)}
        single = self._single(leaf, request=request)
        if leaf.is_repeated:
            return {"type": "array", "items": single}
        return single

    def scalar(self, leaf: FieldDescriptor | None, *, request: bool) -> dict[str, Any]:
        if leaf is None:
            return {"type": "string"}
        return self._single(leaf, request=request)

    def _single(self, leaf: FieldDescriptor, *, request: bool) -> dict[str, Any]:
        if leaf.enum_type is not None:
            return _enum_schema(leaf.enum_type, request=request)
        if leaf.message_type is None:
            schema = dict(_SCALARS[leaf.type])
        elif leaf.message_type.full_name in _WELL_KNOWN:  # a JSON scalar, such as a FieldMask's string
            schema = self.message(leaf.message_type, request=request)
        else:
            return self.message(leaf.message_type, request=request)
        return {**schema, **_limits(leaf)} if request else schema

    def _object(self, message: Descriptor, *, request: bool, leave_out: frozenset[str]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required = []
        for leaf in message.fields:
            if leaf.name in leave_out:
                continue
            schema = self.field(leaf, request=request)
            behaviors = _behaviors(leaf)
            if _OUTPUT_ONLY in behaviors:
                schema = _annotate(schema, readOnly=True)
            if request:
                if is_required(leaf) and leaf.containing_oneof is None:
                    required.append(leaf.name)
                else:  # proto3 JSON reads null as the default, which such a field may keep
                    schema = _nullable(schema)
            elif not leaf.has_presence:
                required.append(leaf.name)
            properties[leaf.name] = self.described(schema, leaf)
        shape: dict[str, Any] = self.described({"type": "object"}, message)
        shape["properties"] = properties
        if required:
            shape["required"] = required
        if request:
            shape.update(_oneof_rules(message, leave_out))
        shape["additionalProperties"] = False
        return shape

    def _component_name(self, message: Descriptor) -> str:
        known = self._names.get(message.full_name)
        if known is not None:
            return known
        taken = set(self._names.values())
        name = message.name if message.name not in taken else message.full_name
        self._names[message.full_name] = name
        return name


def _first_sentence(comment: str) -> str:
    """The first sentence of a comment's first paragraph, on one line."""
    paragraph = " ".join(comment.split("\n\n")[0].split())
    sentence = _SENTENCE.match(paragraph)
    return sentence.group(1) if sentence else paragraph


def _annotate(schema: dict[str, Any], **keywords: Any) -> dict[str, Any]:
    return {**schema, **keywords}


def _enum_schema(enum: EnumDescriptor, *, request: bool) -> dict[str, Any]:
    """Value names; requests leave out the zero (unspecified) value, responses may print it."""
    names = [v.name for v in enum.values if not (request and v.number == 0)]
    return {"type": "string", "enum": names}


def _status_schema(details: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "An error (`google.rpc.Status`): the gRPC code, a message and typed details. The details "
            "always hold an `ErrorInfo` (domain `invmesh`) whose `reason` names the error; a `BadRequest` "
            "names the fields at fault; a `RetryInfo` says when to retry (also sent as `Retry-After`)."
        ),
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "The `google.rpc.Code`."},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"oneOf": details}},
        },
        "required": ["code", "message", "details"],
        "additionalProperties": False,
    }


def _oneof_rules(message: Descriptor, leave_out: frozenset[str]) -> dict[str, Any]:
    """A request sets at most one member of each oneof (proto3 JSON refuses two); a oneof whose
    members are REQUIRED needs exactly one."""
    rules: list[dict[str, Any]] = []
    for oneof in message.oneofs:
        members = [f for f in oneof.fields if f.name not in leave_out]
        names = [f.name for f in members]
        if any(is_required(f) for f in members):
            rules.append({"oneOf": [_set(name) for name in names]})
        elif len(names) > 1:
            rules.append({"not": {"anyOf": [_set(*pair) for pair in combinations(names, 2)]}})
    if len(rules) > 1:
        return {"allOf": rules}
    return rules[0] if rules else {}


def _set(*names: str) -> dict[str, Any]:
    """The fields are set: present and not null (a null member leaves its oneof unset)."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    if "type" not in schema:  # google.protobuf.Value: null already
        return schema
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _limits(leaf: FieldDescriptor) -> dict[str, Any]:
    """The JSON Schema keywords of the field's `invmesh.api.v1.limits`: what its service accepts."""
    limits = leaf.GetOptions().Extensions[LIMITS]
    keywords: dict[str, Any] = {}
    for name, keyword in _LIMIT_KEYWORDS.items():
        if limits.HasField(name):
            keywords[keyword] = getattr(limits, name)
    if limits.pattern:
        keywords["pattern"] = limits.pattern
    if limits.format:
        keywords["format"] = limits.format
    return keywords


_LIMIT_KEYWORDS = {
    "min_length": "minLength",
    "max_length": "maxLength",
    "minimum": "minimum",
    "maximum": "maximum",
}


def _behaviors(leaf: FieldDescriptor) -> Collection[int]:
    return list(leaf.GetOptions().Extensions[FIELD_BEHAVIOR])


def _field_at(message: Descriptor, path: Iterable[str]) -> FieldDescriptor | None:
    leaf = None
    current: Descriptor | None = message
    for name in path:
        if current is None:
            return None
        leaf = current.fields_by_name.get(name)
        if leaf is None:
            return None
        current = leaf.message_type
    return leaf
