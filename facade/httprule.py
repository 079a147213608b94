"""Path templates of `google.api.http` rules: parsing, matching and variable decoding.

The grammar and the decoding rules are those of `google/api/http.proto`:

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

Matching works on the raw (still percent-encoded) path, so an encoded `/` inside a value
never splits a segment. A variable of one segment is fully decoded; a variable of several
segments keeps `%2F` encoded, as the spec asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@]+")  # unreserved and sub-delims, no `*` or `:`
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"(%2[Ff])")


class TemplateError(ValueError):
    """An HttpRule path template that does not follow the grammar."""


class PathError(ValueError):
    """A request path that cannot be decoded (a malformed percent-escape, or not UTF-8)."""


class Kind(IntEnum):
    """Segment kinds, in matching precedence: a literal beats a variable beats `**`."""

    LITERAL = 0
    STAR = 1
    DOUBLE_STAR = 2


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Kind
    literal: str = ""


@dataclass(frozen=True, slots=True)
class Variable:
    field_path: tuple[str, ...]
    start: int  # index of its first segment
    end: int  # index after its last segment

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True, slots=True)
class PathTemplate:
    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def shape(self) -> tuple[object, ...]:
        """What the template matches, whatever its variables are called: equal shapes collide."""
        return (tuple((s.kind, s.literal) for s in self.segments), self.verb)

    @property
    def precedence(self) -> tuple[object, ...]:
        """Sort key: templates with a verb first, then literal segments before variables, left to right."""
        return (0 if self.verb else 1, tuple(s.kind for s in self.segments))

    @property
    def fixed_key(self) -> tuple[int, str] | None:
        """(segments, first literal) of a template that matches only paths of that many
        segments whose first is that literal; None for one with a verb, a `**` or a variable
        first, which may match paths of other shapes."""
        segments = self.segments
        if self.verb or not segments or segments[0].kind is not Kind.LITERAL:
            return None
        if any(segment.kind is Kind.DOUBLE_STAR for segment in segments):
            return None
        return len(segments), segments[0].literal

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded variables if `raw_path` (percent-encoded, no query) matches, else None.

        Raises PathError for a path that matches but whose variables cannot be decoded."""
        if self.verb:
            suffix = ":" + self.verb
            if not raw_path.endswith(suffix):
                return None
            raw_path = raw_path[: -len(suffix)]
        if not raw_path.startswith("/"):
            return None
        parts = raw_path[1:].split("/")
        segments = self.segments
        last = len(segments) - 1
        if segments and segments[-1].kind is Kind.DOUBLE_STAR:
            if len(parts) < last:
                return None
        elif len(parts) != len(segments):
            return None
        for index, segment in enumerate(segments):
            if segment.kind is Kind.DOUBLE_STAR:
                break
            part = parts[index]
            if segment.kind is Kind.LITERAL:
                # Not _decode: a segment that is not UTF-8 is not the (ASCII) literal, and may
                # still match a later template's `*` (replace puts U+FFFD for what does not decode).
                if part != segment.literal and (
                    "%" not in part or unquote(part, errors="replace") != segment.literal
                ):
                    return None
            elif not part:
                return None
        values = {}
        for variable in self.variables:
            if variable.end > last and segments[last].kind is Kind.DOUBLE_STAR:
                raw = "/".join(parts[variable.start :])
            else:
                raw = "/".join(parts[variable.start : variable.end])
            single = variable.end - variable.start == 1 and segments[variable.start].kind is Kind.STAR
            values[variable.name] = _decode(raw) if single else _decode_keeping_slashes(raw)
        return values


def parse(text: str) -> PathTemplate:
    """Parses an HttpRule path template; raises TemplateError saying what is wrong."""
    if not text.startswith("/"):
        raise TemplateError(f"{text!r}: a path template starts with '/'")
    body, verb = _split_verb(text)
    segments: list[Segment] = []
    variables: list[Variable] = []
    position = 1
    while position <= len(body):
        if body.startswith("{", position):
            close = body.find("}", position)
            if close < 0:
                raise TemplateError(f"{text!r}: unclosed '{{'")
            inner = body[position + 1 : close]
            if "{" in inner:
                raise TemplateError(f"{text!r}: a variable cannot contain another variable")
            name, equals, pattern = inner.partition("=")
            field_path = tuple(name.split("."))
            if not all(_IDENT.fullmatch(part) for part in field_path):
                raise TemplateError(f"{text!r}: {name!r} is not a field path")
            if equals and not pattern:
                raise TemplateError(f"{text!r}: {name!r} has an empty template after '='")
            start = len(segments)
            segments.extend(_plain_segment(text, part) for part in (pattern or "*").split("/"))
            variables.append(Variable(field_path, start, len(segments)))
            position = close + 1
        else:
            end = body.find("/", position)
            end = len(body) if end < 0 else end
            segments.append(_plain_segment(text, body[position:end]))
            position = end
        if position < len(body) and body[position] != "/":
            raise TemplateError(f"{text!r}: expected '/' after a segment")
        position += 1
    if any(s.kind is Kind.DOUBLE_STAR for s in segments[:-1]):
        raise TemplateError(f"{text!r}: '**' must be the last segment")
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise TemplateError(f"{text!r}: a field is bound twice")
    return PathTemplate(text, tuple(segments), tuple(variables), verb)


def check_escapes(raw_path: str) -> None:
    """Raises PathError if `raw_path` holds a `%` not followed by two hex digits."""
    if _BAD_ESCAPE.search(raw_path):
        raise PathError("the path holds a malformed percent-escape")


def _split_verb(text: str) -> tuple[str, str]:
    depth = 0
    colon = -1
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and char == "/":
            colon = -1  # a verb only follows the last segment
        elif depth == 0 and char == ":" and colon < 0:
            colon = index
    if colon < 0:
        return text, ""
    verb = text[colon + 1 :]
    if not _LITERAL.fullmatch(verb):
        raise TemplateError(f"{text!r}: {verb!r} is not a valid verb")
    return text[:colon], verb


def _plain_segment(text: str, part: str) -> Segment:
    if part == "*":
        return Segment(Kind.STAR)
    if part == "**":
        return Segment(Kind.DOUBLE_STAR)
    if not _LITERAL.fullmatch(part):
        raise TemplateError(f"{text!r}: {part!r} is not a valid segment")
    return Segment(Kind.LITERAL, part)


def _decode(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise PathError("the path is not valid UTF-8 once decoded") from None


def _decode_keeping_slashes(raw: str) -> str:
    # "%2F" and "%2f" are "left unchanged" (http.proto): the case the client sent is kept.
    return "".join(
        piece if _ENCODED_SLASH.fullmatch(piece) else _decode(piece) for piece in _ENCODED_SLASH.split(raw)
    )
