"""HTTP requests to protobuf messages and back, per the `google.api.http` rules of each RPC.

`bindings()` walks the service descriptors once at startup; every route, and the OpenAPI
document, comes from the `Binding`s it returns. Per request the work is: decode the body,
merge it with the path variables and the query into one dict, and let protobuf's
`json_format` parse that dict into the request message (either field-name form accepted).
A server-streaming RPC's binding also carries its `Stream`: how each message becomes events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
from google.api import field_behavior_pb2, http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from facade import errors, httprule
from facade.message_json import message_to_json
from invmesh.api.v1 import rest_pb2
from mesh.messages import descriptor
from mesh.options import FIELD_BEHAVIOR, HTTP, LIMITS, REST_RESPONSE, REST_STREAM

# The methods an OpenAPI path item can describe; a `custom` rule may use any of them.
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_LOCATION_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FALSE_TRUE = {"false": False, "true": True}
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCALARS = {
    FieldDescriptor.CPPTYPE_STRING: "a string",
    FieldDescriptor.CPPTYPE_BOOL: "true or false",
    FieldDescriptor.CPPTYPE_INT32: "an integer",
    FieldDescriptor.CPPTYPE_UINT32: "a non-negative integer",
    FieldDescriptor.CPPTYPE_INT64: "an integer (a number or a string)",
    FieldDescriptor.CPPTYPE_UINT64: "a non-negative integer (a number or a string)",
    FieldDescriptor.CPPTYPE_FLOAT: "a number",
    FieldDescriptor.CPPTYPE_DOUBLE: "a number",
}
_WELL_KNOWN = {
    "google.protobuf.Timestamp": "an RFC 3339 timestamp string",
    "google.protobuf.Duration": 'a duration string such as "1.5s"',
    "google.protobuf.FieldMask": 'a comma-separated list of field paths such as "name,price"',
}
# These are strings in JSON, so they may come from the query (as in grpc-gateway); and a PATCH
# that sends no FieldMask in its `update_mask` field gets one naming the fields its body holds.
_STRINGS_IN_JSON = frozenset(_WELL_KNOWN)
_FIELD_MASK = "google.protobuf.FieldMask"
_UPDATE_MASK = "update_mask"
_SNAKE_SEGMENT = re.compile(r"_([a-z0-9])")
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


class BadRequest(ValueError):
    """The HTTP request cannot become the RPC's request message; the text says why."""

    def __init__(self, message: str, *, reason: str = "INVALID_ARGUMENT", field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason  # the ErrorInfo reason (facade/errors.py); the default is mesh.errors'
        self.field = field


class RuleError(ValueError):
    """An HttpRule that cannot be served as written (a startup error)."""


@dataclass(frozen=True, slots=True)
class TextLimits:
    """The length and pattern limits a field declares (`invmesh.api.v1.limits`), for a value the
    facade itself puts in the field rather than the client naming it (`Last-Event-ID`)."""

    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None

    @classmethod
    def of(cls, leaf: FieldDescriptor) -> TextLimits:
        limits = leaf.GetOptions().Extensions[LIMITS]
        return cls(
            limits.min_length if limits.HasField("min_length") else None,
            limits.max_length if limits.HasField("max_length") else None,
            re.compile(limits.pattern) if limits.pattern else None,
        )

    def broken_by(self, value: str) -> str | None:
        """What `value` must be and is not ("at most 40 characters"), or None."""
        if self.min_length is not None and len(value) < self.min_length:
            return f"at least {self.min_length} characters"
        if self.max_length is not None and len(value) > self.max_length:
            return f"at most {self.max_length} characters"
        if self.pattern is not None and not self.pattern.search(value):
            return f"a match of {self.pattern.pattern}"
        return None


@dataclass(frozen=True, slots=True)
class Stream:
    """How a server-streaming RPC's messages become events (its `invmesh.api.v1.rest_stream`
    option); "" where the option names no field. An event is a message, or each element of
    its `events` field."""

    event_id: str  # the event's field whose value is its SSE `id`
    event_type: str  # the event's oneof whose set member names its SSE `event`
    resume_from: str  # the request field that a `Last-Event-ID` header sets
    resume_limits: TextLimits = TextLimits()
    events: str = ""  # the repeated response field whose elements are the events

    def events_of(self, message: Message) -> Sequence[Message]:
        return getattr(message, self.events) if self.events else (message,)

    def id_of(self, event: Message) -> str | None:
        return str(getattr(event, self.event_id)) if self.event_id else None

    def type_of(self, event: Message) -> str | None:
        return event.WhichOneof(self.event_type) if self.event_type else None


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP method and path template bound to one RPC."""

    service: ServiceDescriptor
    method: MethodDescriptor
    http_method: str  # upper case
    template: httprule.PathTemplate
    body: str  # "" (no body), "*" (every field not in the path) or a top-level field name
    response_body: str  # "" for the whole response, else a top-level field name
    status: int
    location: str
    request_class: type[Message]
    response_class: type[Message]
    path_fields: frozenset[str] = field(default=frozenset())
    # The body's message, for a PATCH of one beside a FieldMask `update_mask`: that mask, when
    # the request sets none, names the fields of the body. None for any other binding.
    masked_body: Descriptor | None = None
    stream: Stream | None = None  # for a server-streaming RPC

    @property
    def grpc_path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    def request(
        self, path_values: dict[str, str], query: bytes, body: bytes, last_event_id: str | None = None
    ) -> Message:
        """Builds the request message; raises BadRequest naming what is wrong. A stream's
        `last_event_id` (the header an EventSource sends on reconnecting) wins over the query,
        whose resume point is the one the stream started from."""
        values = self._body_values(body)
        # Read before the path variables join the body: only what the client sent is updated.
        sent = list(_mask_paths(self.masked_body, values.get(self.body))) if self.masked_body else []
        pairs = _query_pairs(query)
        if pairs and self.body == "*":
            name = pairs[0][0]
            raise BadRequest(
                f"unknown query parameter {name!r}: this route reads its fields from the body",
                reason=errors.INVALID_QUERY,
                field=name,
            )
        self._merge_query(values, pairs)
        if last_event_id and self.stream is not None and self.stream.resume_from:
            self._resume(values, last_event_id, self.stream)
        for name, value in path_values.items():
            _set_path(values, descriptor(self.request_class), name.split("."), value)
        try:
            message = json_format.ParseDict(values, self.request_class())
        except json_format.ParseError as exc:
            raise _parse_error(descriptor(self.request_class), str(exc), values, self.body) from None
        except RecursionError:
            raise BadRequest("the body nests too deeply", reason=errors.INVALID_JSON) from None
        except OverflowError:  # json_format turns ValueError into ParseError, but not this:
            # an integer no double holds given for a double, or ±Infinity for an enum.
            raise BadRequest("a number in the request is out of range", reason=errors.INVALID_VALUE) from None
        if self.masked_body is not None and not message.HasField(_UPDATE_MASK):
            mask = getattr(message, _UPDATE_MASK)
            mask.SetInParent()  # an empty body updates nothing, rather than everything
            mask.paths.extend(sent)
        return message

    def response(self, message: Message) -> dict[str, Any] | list[Any] | Any:
        """The JSON value of the response (or of its `response_body` field)."""
        if not self.response_body:
            return message_to_json(message)
        part = getattr(message, self.response_body)
        if isinstance(part, Message):
            return message_to_json(part)
        return message_to_json(message).get(self.response_body)

    def location_of(self, payload: Any) -> str | None:
        if not self.location or not isinstance(payload, dict):
            return None
        return _LOCATION_FIELD.sub(lambda m: quote(str(payload.get(m.group(1), "")), safe=""), self.location)

    def _resume(self, values: dict[str, Any], last_event_id: str, stream: Stream) -> None:
        # Checked here, not left to the service, whose error would name a field the client never sent.
        broken = stream.resume_limits.broken_by(last_event_id)
        if broken is not None:
            raise BadRequest(
                f"the Last-Event-ID header (which sets {stream.resume_from!r}) must be {broken}",
                reason=errors.INVALID_VALUE,
                field=stream.resume_from,
            )
        _set_path(values, descriptor(self.request_class), [stream.resume_from], last_event_id)

    def _body_values(self, body: bytes) -> dict[str, Any]:
        if not self.body:
            if body.strip():
                raise BadRequest(
                    f"{self.http_method} {self.template.text} takes no request body",
                    reason=errors.INVALID_BODY,
                )
            return {}
        if not body.strip():
            if self.body != "*" and is_required(descriptor(self.request_class).fields_by_name[self.body]):
                raise BadRequest(
                    f"{self.http_method} {self.template.text} needs a body: `{self.body}` is required",
                    reason=errors.INVALID_BODY,
                    field=self.body,
                )
            return {}  # no body leaves the body field unset, as the RPC would see it over gRPC
        try:
            parsed = json.loads(body, object_pairs_hook=_object_without_duplicates)
        except _DuplicateKey as exc:
            raise BadRequest(
                f"the key {exc.key!r} appears more than once in an object",
                reason=errors.DUPLICATE_KEY,
                field=exc.key,
            ) from None
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not valid JSON", reason=errors.INVALID_JSON) from None
        if self.body == "*":
            if not isinstance(parsed, dict):
                raise BadRequest("the request body must be a JSON object", reason=errors.INVALID_BODY)
            return parsed
        target = descriptor(self.request_class).fields_by_name[self.body]
        if target.message_type is not None and not _is_repeated(target) and not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object", reason=errors.INVALID_BODY)
        return {self.body: parsed}

    def _merge_query(self, values: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
        seen: set[str] = set()
        for name, value in pairs:
            path, leaf = _resolve(descriptor(self.request_class), name)
            if path is None or leaf is None:
                raise BadRequest(f"unknown query parameter {name!r}", reason=errors.UNKNOWN_FIELD, field=name)
            # Messages quote the parameter as the client wrote it; details name the proto field.
            canonical = ".".join(path)
            if canonical in self.path_fields or path[0] == self.body:
                raise BadRequest(
                    f"query parameter {name!r} is bound by the path or body",
                    reason=errors.INVALID_QUERY,
                    field=canonical,
                )
            if leaf.message_type is not None and leaf.message_type.full_name not in _STRINGS_IN_JSON:
                raise BadRequest(
                    f"query parameter {name!r} names a message; set its fields instead",
                    reason=errors.INVALID_QUERY,
                    field=canonical,
                )
            scalar = _query_scalar(leaf, value, name, canonical)
            holder = values
            for part in path[:-1]:
                holder = holder.setdefault(part, {})
            if _is_repeated(leaf):
                holder.setdefault(path[-1], []).append(scalar)
            elif canonical in seen:
                raise BadRequest(
                    f"query parameter {name!r} is given more than once",
                    reason=errors.INVALID_QUERY,
                    field=canonical,
                )
            else:
                seen.add(canonical)
                holder[path[-1]] = scalar


class _DuplicateKey(Exception):  # not a ValueError, which json.loads's callers read as "not JSON"
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (JSON parsers disagree on which wins)."""
    built = dict(pairs)
    if len(built) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return built


def bindings(services: Iterable[ServiceDescriptor]) -> list[Binding]:
    """Every HTTP binding of every RPC of `services`; raises RuleError for a rule that cannot work."""
    found = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(HTTP):
                continue
            rule = options.Extensions[HTTP]
            rest = options.Extensions[REST_RESPONSE]
            stream = _stream(method)
            for each in (rule, *rule.additional_bindings):
                if each is not rule and each.additional_bindings:
                    raise RuleError(f"{method.full_name}: additional_bindings may not nest")
                found.append(_binding(service, method, each, rest, stream))
    return found


def _stream(method: MethodDescriptor) -> Stream | None:
    """The method's `rest_stream` convention if it streams its responses; raises RuleError for a
    stream REST cannot carry, or an option that names what the messages do not have."""
    where = method.full_name
    if method.client_streaming:
        raise RuleError(f"{where}: a client-streaming RPC has no REST binding")
    option = method.GetOptions().Extensions[REST_STREAM]
    if not method.server_streaming:
        if method.GetOptions().HasExtension(REST_STREAM):
            raise RuleError(f"{where}: rest_stream is for a server-streaming RPC")
        return None
    request, event = method.input_type, _event_message(method.output_type, option.events)
    if event is None:
        raise RuleError(f"{where}: rest_stream.events must name a repeated message field of the response")
    if option.event_id and not _is_singular_scalar(event.fields_by_name.get(option.event_id)):
        raise RuleError(f"{where}: rest_stream.event_id must name a singular scalar field of the event")
    if option.event_type and option.event_type not in event.oneofs_by_name:
        raise RuleError(f"{where}: rest_stream.event_type must name a oneof of the event")
    if not option.resume_from:
        return Stream(option.event_id, option.event_type, "", events=option.events)
    resume = request.fields_by_name.get(option.resume_from)
    if resume is None or not _is_singular_scalar(resume):
        raise RuleError(f"{where}: rest_stream.resume_from must name a singular scalar request field")
    return Stream(
        option.event_id, option.event_type, option.resume_from, TextLimits.of(resume), option.events
    )


def _event_message(response: Descriptor, events: str) -> Descriptor | None:
    """The message each event of a stream is: the response, or the element of its field `events`;
    None if that is not a repeated message field (nor a map)."""
    if not events:
        return response
    elements = response.fields_by_name.get(events)
    if elements is None or not elements.is_repeated or elements.message_type is None:
        return None
    return None if elements.message_type.GetOptions().map_entry else elements.message_type


def _binding(
    service: ServiceDescriptor,
    method: MethodDescriptor,
    rule: http_pb2.HttpRule,
    rest: rest_pb2.RestResponse,
    stream: Stream | None,
) -> Binding:
    where = method.full_name
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RuleError(f"{where}: the HttpRule names no method and path")
    if kind == "custom":
        http_method, text = rule.custom.kind.upper(), rule.custom.path
        # Not "*" (any method) nor an extension method: neither has a place in the OpenAPI document.
        if http_method.lower() not in HTTP_METHODS:
            served = ", ".join(m.upper() for m in HTTP_METHODS)
            raise RuleError(f"{where}: custom kind {rule.custom.kind!r} is not one of {served}")
    else:
        http_method, text = kind.upper(), getattr(rule, kind)
    try:
        template = httprule.parse(text)
    except httprule.TemplateError as exc:
        raise RuleError(f"{where}: {exc}") from None
    request = method.input_type
    for variable in template.variables:
        leaf = _field_at(request, variable.field_path)
        if leaf is None:
            raise RuleError(f"{where}: {text!r} binds {variable.name!r}, which the request does not have")
        if not _is_singular_scalar(leaf):
            raise RuleError(f"{where}: path variable {variable.name!r} must be a singular scalar field")
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise RuleError(f"{where}: body {rule.body!r} is not a top-level request field")
    if rule.body and http_method == "GET":
        raise RuleError(f"{where}: a GET binding cannot take a body")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise RuleError(f"{where}: response_body {rule.response_body!r} is not a top-level response field")
    status = rest.status or 200
    if not 200 <= status < 300:
        raise RuleError(f"{where}: rest_response.status must be a 2xx status")
    if stream is not None and (status == 204 or rest.location):
        raise RuleError(f"{where}: a stream answers with a body and no Location")
    if stream is not None and stream.events and rule.response_body:
        raise RuleError(f"{where}: a stream sends rest_stream.events, or response_body: not both")
    path_fields = frozenset(v.name for v in template.variables)
    if stream is not None and stream.resume_from in path_fields:
        raise RuleError(f"{where}: rest_stream.resume_from {stream.resume_from!r} is bound by the path")
    mask = request.fields_by_name.get(_UPDATE_MASK)
    body = request.fields_by_name.get(rule.body)
    infers_update_mask = (
        http_method == "PATCH"
        and body is not None
        and not _is_repeated(body)
        and mask is not None
        and mask.message_type is not None
        and mask.message_type.full_name == _FIELD_MASK
    )
    return Binding(
        service=service,
        method=method,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        status=status,
        location=rest.location,
        request_class=GetMessageClass(request),
        response_class=GetMessageClass(method.output_type),
        path_fields=path_fields,
        masked_body=body.message_type if infers_update_mask and body is not None else None,
        stream=stream,
    )


def query_fields(binding: Binding) -> Iterator[tuple[str, FieldDescriptor]]:
    """The (dotted path, leaf) pairs a binding reads from the query string, for the OpenAPI document."""
    if binding.body == "*":
        return
    yield from _leaves(descriptor(binding.request_class), (), binding, depth=0)


def _leaves(
    message: Descriptor, prefix: tuple[str, ...], binding: Binding, depth: int
) -> Iterator[tuple[str, FieldDescriptor]]:
    for leaf in message.fields:
        path = (*prefix, leaf.name)
        dotted = ".".join(path)
        if dotted in binding.path_fields or path[0] == binding.body:
            continue
        if leaf.message_type is None or leaf.message_type.full_name in _STRINGS_IN_JSON:
            yield dotted, leaf
        elif (
            not _is_repeated(leaf)
            and depth < 3
            and not leaf.message_type.full_name.startswith("google.protobuf")
        ):
            yield from _leaves(leaf.message_type, path, binding, depth + 1)


def dumps(payload: Any) -> bytes:
    """JSON as the facade writes it, in UTF-8: no spaces, non-ASCII as is; one line, as strings
    escape line breaks."""
    return orjson.dumps(payload)


def is_required(leaf: FieldDescriptor) -> bool:
    """Whether the field is `google.api.field_behavior = REQUIRED`."""
    return field_behavior_pb2.REQUIRED in leaf.GetOptions().Extensions[FIELD_BEHAVIOR]


def _is_repeated(leaf: FieldDescriptor) -> bool:
    return leaf.is_repeated


def _is_singular_scalar(leaf: FieldDescriptor | None) -> bool:
    return leaf is not None and leaf.message_type is None and not _is_repeated(leaf)


def _field_named(message: Descriptor, name: str) -> FieldDescriptor | None:
    found = message.fields_by_name.get(name)
    if found is None:
        found = next((f for f in message.fields if f.json_name == name), None)
    return found


def _field_at(message: Descriptor | None, path: Sequence[str]) -> FieldDescriptor | None:
    found = None
    for index, name in enumerate(path):
        if message is None:
            return None
        found = message.fields_by_name.get(name)
        if found is None:
            return None
        if index < len(path) - 1:
            if _is_repeated(found):
                return None
            message = found.message_type
    return found


def _resolve(message: Descriptor, dotted: str) -> tuple[tuple[str, ...] | None, FieldDescriptor | None]:
    """A query name (either field-name form, dotted) to its proto-name path and leaf."""
    path: list[str] = []
    leaf = None
    current: Descriptor | None = message
    for name in dotted.split("."):
        if current is None:
            return None, None
        leaf = _field_named(current, name)
        if leaf is None:
            return None, None
        path.append(leaf.name)
        current = leaf.message_type if not _is_repeated(leaf) else None
    return tuple(path), leaf


def _query_pairs(query: bytes) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a query string; "a=1&&b" has two."""
    text = query.decode("latin-1")
    # parse_qsl would keep "%zz" as is; the path refuses it, so the query does too.
    if _BAD_ESCAPE.search(text):
        raise BadRequest("the query string holds a malformed percent-escape", reason=errors.INVALID_QUERY)
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(
            "the query string is not valid UTF-8 once decoded", reason=errors.INVALID_QUERY
        ) from None


def _mask_paths(message: Descriptor, body: Any, prefix: str = "") -> Iterator[str]:
    """The field paths a JSON object sets, as an update mask names them: into nested messages,
    where a non-empty object sets only some of their fields; a list, a map, a well-known type or
    an empty object as a whole. Unknown keys are left out (the parse refuses them)."""
    if not isinstance(body, dict):
        return
    for key, value in body.items():
        leaf = _field_named(message, key)
        if leaf is None:
            continue
        path = prefix + leaf.name
        nested = leaf.message_type
        if (
            nested is not None
            and not _is_repeated(leaf)
            and not nested.full_name.startswith("google.protobuf.")
            and isinstance(value, dict)
            and value
        ):
            yield from _mask_paths(nested, value, path + ".")
        else:
            yield path


def _query_scalar(leaf: FieldDescriptor, value: str, name: str, canonical: str) -> Any:
    """A query string value in the form json_format reads for the field's type."""
    if leaf.message_type is not None:
        if leaf.message_type.full_name != _FIELD_MASK:
            return value  # a Timestamp or a Duration, the string json_format reads
        # A FieldMask's paths, in either name form, to JSON's lowerCamelCase.
        paths = (_SNAKE_SEGMENT.sub(lambda m: m.group(1).upper(), path) for path in value.split(","))
        return ",".join(path for path in paths if path)
    if leaf.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() not in _FALSE_TRUE:
            raise BadRequest(
                f"query parameter {name!r} must be true or false",
                reason=errors.INVALID_VALUE,
                field=canonical,
            )
        return _FALSE_TRUE[value.lower()]
    if leaf.cpp_type in _INTEGER_TYPES and not _INTEGER.fullmatch(value):
        raise BadRequest(
            f"query parameter {name!r} must be an integer", reason=errors.INVALID_VALUE, field=canonical
        )
    return value


def _set_path(values: dict[str, Any], message: Descriptor, path: list[str], value: str) -> None:
    """Sets a path variable, replacing whatever the body said for the same field (either name form)."""
    holder = values
    for name in path[:-1]:
        leaf = message.fields_by_name[name]
        nested = holder.pop(leaf.json_name, None) if leaf.json_name != name else None
        holder = holder.setdefault(name, nested if isinstance(nested, dict) else {})
        if not isinstance(holder, dict):
            raise BadRequest(f"{name!r} must be a JSON object", reason=errors.INVALID_VALUE, field=name)
        assert leaf.message_type is not None  # the binding checked that the path's fields are messages
        message = leaf.message_type
    leaf = message.fields_by_name[path[-1]]
    holder.pop(leaf.json_name, None)
    holder[leaf.name] = _FALSE_TRUE.get(value, value) if leaf.type == FieldDescriptor.TYPE_BOOL else value


def _parse_error(message: Descriptor, text: str, values: dict[str, Any], body: str) -> BadRequest:
    """json_format's complaint, restated with the field's JSON path and the type it wants,
    without Python or protobuf internals. Inside a `body` field the path starts at the body,
    as the client wrote it (and as the services name their own field violations)."""
    raw = _FAILED_FIELD.findall(text)
    unknown = _UNKNOWN_FIELD.search(text)
    fields = _named_fields(message, raw)
    # json_format reads the characters of a string (or the items of a list) given for a message
    # as field names: that is a wrong type at that message, not an unknown or mistyped field in it.
    for depth, leaf in enumerate(fields):
        inside = depth < len(raw) - 1 or unknown is not None
        if (
            inside
            and leaf.message_type is not None
            and not _holds_fields(leaf, _value_at(values, raw[: depth + 1]))
        ):
            fields, unknown = fields[: depth + 1], None
            break
    names = [f.name for f in fields]
    if unknown and len(fields) == len(raw):
        name = _in_body([*names, unknown.group(1)], body)
        return BadRequest(f"unknown field {name!r}", reason=errors.UNKNOWN_FIELD, field=name)
    name = _in_body(names, body)
    if not fields:
        return BadRequest("the request does not match the expected JSON shape", reason=errors.INVALID_BODY)
    if "out of range" in text:
        return BadRequest(f"{name!r} is out of range", reason=errors.INVALID_VALUE, field=name)
    return BadRequest(f"{name!r} must be {_expected(fields[-1])}", reason=errors.INVALID_VALUE, field=name)


def _in_body(names: list[str], body: str) -> str:
    if len(names) > 1 and names[0] == body:
        names = names[1:]
    return ".".join(names)


def _named_fields(message: Descriptor, names: Sequence[str]) -> list[FieldDescriptor]:
    """The fields of names as json_format reports them (as the client spelt them, either form),
    as far as they name fields."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in names:
        found = _field_named(current, name) if current is not None else None
        if found is None:
            break
        fields.append(found)
        current = found.message_type
    return fields


def _value_at(values: Any, names: Sequence[str]) -> Any:
    for name in names:
        if not isinstance(values, dict):
            return None
        values = values.get(name)
    return values


def _holds_fields(leaf: FieldDescriptor, value: Any) -> bool:
    """Whether `value` is a JSON object, or a list of them for a repeated message `leaf`."""
    if _is_repeated(leaf) and isinstance(value, list):
        return all(isinstance(item, dict) for item in value)
    return isinstance(value, dict)


def _expected(leaf: FieldDescriptor) -> str:
    if leaf.enum_type is not None:
        kind = "one of " + ", ".join(v.name for v in leaf.enum_type.values if v.number != 0)
    elif leaf.message_type is not None:
        kind = _WELL_KNOWN.get(leaf.message_type.full_name, "a JSON object")
    else:
        kind = _SCALARS.get(leaf.cpp_type, "a value of its type")
    return f"a list of {kind}" if _is_repeated(leaf) else kind
