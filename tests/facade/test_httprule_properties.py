"""Properties of facade/httprule.py (the HttpRule path templates of google/api/http.proto),
checked on templates and paths that hypothesis generates.

What is proved, for every generated template (literals, `*`, `**`, `{var}`, `{a.b}`,
`{name=lit/*/**}`, an optional `:verb`):

* it parses to the segments and variables it was built from, and so does its canonical
  rendering (every variable written out as `{name=...}`);
* a path built from it, with any values (unicode, reserved characters, raw bytes, each
  character sent raw where a path allows it or percent-encoded in either hex case), matches
  and gives the values back: a single-segment variable fully decoded, a multi-segment one with
  `%2F`/`%2f` kept as sent; values that are not UTF-8 raise PathError, and only those;
* matching agrees with a reference matcher (a regular expression per template) on every path,
  arbitrary ones included: match answers None or the values and never raises anything but
  PathError, which it raises only for a path the template matches;
* parse of any string returns a well-formed template or raises TemplateError, nothing else;
* the router (facade/routing.py) picks the same binding for every path whatever order the
  bindings were declared in: templates of equal precedence never match the same path.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import random
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.routing import Match

from facade.httprule import Kind, PathError, PathTemplate, TemplateError, check_escapes, parse
from facade.routing import TranscodedRoutes
from facade.transcoding import Binding, bindings
from tests.facade.protos import service

settings.register_profile("invmesh-properties", derandomize=True, database=None, deadline=None)
PROPERTIES = settings(settings.get_profile("invmesh-properties"), max_examples=150)

LITERAL_CHARS = "ABCXYZabcxyz0189-._~!$&'()+,;=@"
LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@]+")  # http.proto's LITERAL, as the facade serves it
# What RFC 3986 lets a path segment hold unencoded (pchar), so a client may send it raw.
PCHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")

# --- generated templates ---------------------------------------------------------------------------------

# A part of a template: ("lit", text) | ("star",) | ("dstar",) | ("var", name, pattern or None),
# where a pattern is a list of lit/star/dstar parts.
Part = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Generated:
    """A template as built, and what parse must make of it."""

    parts: tuple[Part, ...]
    verb: str

    @property
    def text(self) -> str:
        return "/" + "/".join(_render(p) for p in self.parts) + (f":{self.verb}" if self.verb else "")

    @property
    def flat(self) -> list[Part]:
        """One entry per segment, the variable parts unfolded."""
        out: list[Part] = []
        for part in self.parts:
            out.extend(part[2] or [("star",)] if part[0] == "var" else [part])
        return out

    @property
    def variables(self) -> list[tuple[str, int, int]]:
        found, position = [], 0
        for part in self.parts:
            width = len(part[2] or [None]) if part[0] == "var" else 1
            if part[0] == "var":
                found.append((part[1], position, position + width))
            position += width
        return found


def _render(part: Part, canonical: bool = False) -> str:
    if part[0] == "lit":
        return str(part[1])
    if part[0] == "star":
        return "*"
    if part[0] == "dstar":
        return "**"
    pattern = part[2] or ([("star",)] if canonical else None)
    return "{" + str(part[1]) + ("=" + "/".join(_render(p) for p in pattern) if pattern else "") + "}"


literals = st.text(LITERAL_CHARS, min_size=1, max_size=6)
idents = st.builds(operator.add, st.sampled_from("abzAZ_"), st.text("abzAZ_09", max_size=4))
field_paths = st.lists(idents, min_size=1, max_size=3).map(".".join)


def _templates(literal: st.SearchStrategy[str]) -> st.SearchStrategy[Generated]:
    """Templates of 1 to 5 parts; `**` (alone or ending a variable's pattern) only last."""
    simple = st.one_of(literal.map(lambda t: ("lit", t)), st.just(("star",)))
    patterns = st.one_of(st.none(), st.lists(simple, min_size=1, max_size=3))
    inner = st.one_of(
        literal.map(lambda t: ("lit", t)),
        st.just(("star",)),
        st.tuples(st.just("var"), field_paths, patterns),
    )
    tail = st.one_of(
        inner,
        st.just(("dstar",)),
        st.tuples(st.just("var"), field_paths, patterns.map(lambda p: [*(p or []), ("dstar",)])),
    )

    def unique_names(parts: tuple[Part, ...]) -> tuple[Part, ...]:
        return tuple((p[0], f"{p[1]}{n}", p[2]) if p[0] == "var" else p for n, p in enumerate(parts))

    return st.builds(
        lambda head, last, verb: Generated(unique_names((*head, last)), verb),
        st.lists(inner, max_size=4),
        tail,
        st.one_of(st.just(""), literal),
    )


templates = _templates(literals)
# Few literals, so that templates share prefixes and compete for the same paths.
few_literals = st.sampled_from(["v1", "a", "b"])
competing_templates = _templates(few_literals)


def _expected_kinds(template: Generated) -> list[tuple[Kind, str]]:
    kinds = {"lit": Kind.LITERAL, "star": Kind.STAR, "dstar": Kind.DOUBLE_STAR}
    return [(kinds[p[0]], p[1] if p[0] == "lit" else "") for p in template.flat]


# --- generated paths -------------------------------------------------------------------------------------

values = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8).map(str.encode),
    st.text(st.sampled_from("/%?#[]:@ +;=&é€\x00"), min_size=1, max_size=6).map(str.encode),  # reserved
    st.binary(min_size=1, max_size=6),  # often not UTF-8
)
segment_lists = st.lists(values, max_size=3)


def _sent(byte: int, choice: random.Random) -> str:
    """One byte as a client may send it: raw where a path allows, else (or at whim) %XX in either case."""
    if byte in PCHAR and choice.random() < 0.6:
        return chr(byte)
    escape = f"%{byte:02X}"
    return escape.lower() if choice.random() < 0.3 else escape


def _decoded_keeping_slashes(data: bytes, sent: Sequence[str]) -> str:
    """The spec's multi-segment decoding: everything decoded but `/`, which stays as sent."""
    out, run = [], bytearray()
    for byte, piece in zip(data, sent, strict=True):
        if byte == 0x2F:
            out.extend([run.decode(), piece])
            run = bytearray()
        else:
            run.append(byte)
    out.append(run.decode())
    return "".join(out)


@dataclasses.dataclass
class Built:
    path: str
    values: dict[str, str]
    undecodable: bool  # a variable holds bytes that are not UTF-8


@st.composite
def built_paths(draw: st.DrawFn, template: Generated) -> Built:
    """A path of `template` with drawn values, and the values match must give back."""
    choice = random.Random(draw(st.integers(0, 2**16)))  # how each byte is sent
    segments: list[list[tuple[bytes, list[str]]]] = []  # per template segment, its path segments
    for part in template.flat:
        if part[0] == "lit":
            data = [part[1].encode()]
        elif part[0] == "star":
            data = [draw(values)]
        else:
            data = draw(segment_lists)
        segments.append([(d, [_sent(b, choice) for b in d]) for d in data])
    path = "/" + "/".join("".join(sent) for each in segments for _, sent in each)
    if template.verb:
        path += ":" + template.verb
    expected, undecodable = {}, False
    for name, start, end in template.variables:
        pieces = [piece for each in segments[start:end] for piece in each]
        try:
            if end - start == 1 and template.flat[start][0] == "star":
                expected[name] = pieces[0][0].decode()
            else:
                expected[name] = "/".join(_decoded_keeping_slashes(d, sent) for d, sent in pieces)
        except UnicodeDecodeError:
            undecodable = True
    return Built(path, expected, undecodable)


# --- a reference matcher ---------------------------------------------------------------------------------


def _literal_rx(literal: str) -> str:
    def char(c: str) -> str:
        hi, lo = list(f"{ord(c):02X}")
        return f"(?:{re.escape(c)}|%[{hi}{hi.lower()}][{lo}{lo.lower()}])"

    return "".join(char(c) for c in literal)


def reference_rx(template: PathTemplate) -> re.Pattern[str]:
    """The template as a regular expression over the raw path, one group per variable: a
    literal may be sent percent-encoded, `*` is one non-empty segment, `**` is the rest of the
    path after a "/" (nothing at all, after a segment)."""
    text = ""
    for index, segment in enumerate(template.segments):
        opening = "".join(f"(?P<v{n}>" for n, v in enumerate(template.variables) if v.start == index)
        closing = ")" * sum(1 for v in template.variables if v.end == index + 1)
        if segment.kind is Kind.LITERAL:
            text += "/" + opening + _literal_rx(segment.literal) + closing
        elif segment.kind is Kind.STAR:
            text += "/" + opening + "[^/]+" + closing
        elif index == 0:
            text += "/" + opening + ".*" + closing
        elif opening:
            text += "(?:/" + opening + ".*" + closing + ")?"
        else:
            text += "(?:/.*)?" + closing
    verb = re.escape(":" + template.verb) if template.verb else ""
    return re.compile(text + verb, re.DOTALL)


def _reference_decode(template: PathTemplate, index: int, raw: str) -> str:
    variable = template.variables[index]
    single = variable.end - variable.start == 1 and template.segments[variable.start].kind is Kind.STAR
    if single:
        return unquote(raw, errors="strict")
    return "".join(
        p if re.fullmatch("%2[Ff]", p) else unquote(p, errors="strict") for p in re.split("(%2[Ff])", raw)
    )


def reference_match(template: PathTemplate, path: str) -> dict[str, str] | type[PathError] | None:
    found = reference_rx(template).fullmatch(path)
    if found is None:
        return None
    try:
        return {
            v.name: _reference_decode(template, n, found.group(f"v{n}") or "")
            for n, v in enumerate(template.variables)
        }
    except UnicodeDecodeError:
        return PathError


def actual_match(template: PathTemplate, path: str) -> dict[str, str] | type[PathError] | None:
    try:
        return template.match(path)
    except PathError:
        return PathError


# --- parsing ---------------------------------------------------------------------------------------------


@PROPERTIES
@given(templates)
def test_a_generated_template_parses_to_what_it_was_built_from(template: Generated) -> None:
    parsed = parse(template.text)
    assert [(s.kind, s.literal) for s in parsed.segments] == _expected_kinds(template)
    assert [(v.name, v.start, v.end) for v in parsed.variables] == template.variables
    assert parsed.verb == template.verb
    canonical = "/" + "/".join(_render(p, canonical=True) for p in template.parts)
    canonical += f":{template.verb}" if template.verb else ""
    assert parse(canonical).shape == parsed.shape
    assert parse(canonical).variables == parsed.variables


def _well_formed(template: PathTemplate) -> None:
    assert template.text.startswith("/")
    assert template.segments, "a template has at least one segment"
    assert all(s.kind is not Kind.DOUBLE_STAR for s in template.segments[:-1])
    assert all(LITERAL.fullmatch(s.literal) for s in template.segments if s.kind is Kind.LITERAL)
    assert template.verb == "" or LITERAL.fullmatch(template.verb)
    position = 0
    for variable in template.variables:
        assert position <= variable.start < variable.end <= len(template.segments)
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in variable.field_path)
        position = variable.end
    assert len({v.name for v in template.variables}) == len(template.variables)
    assert parse(template.text) == template


template_like = st.text(st.sampled_from("/{}*=.:ab_1%é\x00?"), max_size=24)


@PROPERTIES
@given(st.one_of(template_like, st.text(max_size=30), template_like.map(lambda t: "/" + t)))
@example("/v1/{a=b/**}:c")
@example("/{a}}")
@example("/**:")
def test_parse_raises_only_template_error(text: str) -> None:
    try:
        template = parse(text)
    except TemplateError:
        return
    _well_formed(template)


# --- matching --------------------------------------------------------------------------------------------


@PROPERTIES
@given(st.data())
def test_a_built_path_matches_and_gives_its_values_back(data: st.DataObject) -> None:
    template = data.draw(templates)
    built = data.draw(built_paths(template))
    parsed = parse(template.text)
    if built.undecodable:
        try:
            parsed.match(built.path)
        except PathError:
            return
        raise AssertionError(f"{built.path!r} holds a variable that is not UTF-8, yet matched")
    assert parsed.match(built.path) == built.values
    check_escapes(built.path)  # what a client builds this way passes the router's check


path_like = st.text(st.sampled_from("/abcxyz01:%2FfE9é~*{}"), max_size=20).map(lambda t: "/" + t)
escapes = st.sampled_from(["%FF", "%C3", "%ED%A0%80", "%2F", "%2f", "%zz", "%", "%61"])


@st.composite
def near_paths(draw: st.DrawFn, template: Generated) -> str:
    """A built path with one segment replaced, dropped or added: mostly paths that do not match."""
    built = draw(built_paths(template))
    parts = built.path.split("/")
    index = draw(st.integers(1, len(parts)))
    replacement = draw(st.one_of(escapes, path_like.map(lambda p: p[1:]), literals))
    if draw(st.booleans()) and index < len(parts):
        parts[index] = replacement
    elif draw(st.booleans()) and index < len(parts):
        del parts[index]
    else:
        parts.insert(index, replacement)
    return "/".join(parts)


@PROPERTIES
@given(st.data())
def test_match_agrees_with_the_reference_on_any_path(data: st.DataObject) -> None:
    template = data.draw(competing_templates)
    parsed = parse(template.text)
    path = data.draw(st.one_of(near_paths(template), path_like, st.text(max_size=20)))
    assert actual_match(parsed, path) == reference_match(parsed, path)


def test_a_path_that_does_not_match_never_raises() -> None:
    # Found by the property above: the literal "a" was compared with the decoded segment, and
    # "%FF" does not decode, so match raised PathError for a path it does not match.
    assert parse("/v1/a/{id}").match("/v1/%FF/x") is None
    assert parse("/v1/a").match("/v1/%C3") is None


# --- routing ---------------------------------------------------------------------------------------------


@functools.cache
def _echo_binding() -> Binding:
    return next(b for b in bindings([service("EchoService")]) if b.method.name == "GetItem")


def _router(templates: Sequence[tuple[str, PathTemplate]]) -> TranscodedRoutes:
    base = _echo_binding()
    table = [dataclasses.replace(base, http_method=m, template=t) for m, t in templates]
    return TranscodedRoutes(
        table, backend_names={}, default_timeout=1.0, max_timeout=1.0, max_body_bytes=1024
    )


def _route(router: TranscodedRoutes, method: str, path: str) -> tuple[Any, ...]:
    match, child = router.matches(
        {"type": "http", "method": method, "path": unquote(path), "raw_path": path.encode()}
    )
    binding = child.get("invmesh.binding")
    return (
        match,
        binding and (binding.http_method, binding.template.text),
        child.get("invmesh.path_values"),
        sorted(child.get("invmesh.allow", [])),
        child.get("invmesh.path_error"),
    )


@settings(PROPERTIES, max_examples=60)
@given(st.data())
def test_the_router_picks_the_same_binding_whatever_the_declaration_order(data: st.DataObject) -> None:
    drawn = data.draw(
        st.lists(st.tuples(st.sampled_from(["GET", "POST"]), competing_templates), min_size=2, max_size=6)
    )
    seen, templates = set(), []
    for method, template in drawn:
        parsed = parse(template.text)
        if (method, parsed.shape) not in seen:
            seen.add((method, parsed.shape))
            templates.append((method, parsed, template))
    shuffled = data.draw(st.permutations(templates))
    first = _router([(m, t) for m, t, _ in templates])
    second = _router([(m, t) for m, t, _ in shuffled])
    for _, _, generated_template in templates:
        path = data.draw(st.one_of(built_paths(generated_template).map(lambda b: b.path), path_like))
        for method in ("GET", "POST", "DELETE"):
            assert _route(first, method, path) == _route(second, method, path)
        # Why: two templates of equal precedence never both match one path.
        matching = [t for _, t, _ in templates if actual_match(t, path) not in (None, PathError)]
        for one in matching:
            for other in matching:
                if one.shape != other.shape:
                    assert one.precedence != other.precedence, (one.text, other.text, path)


def test_an_undecodable_segment_under_a_literal_does_not_hide_a_later_route() -> None:
    # /v1/a/{id} sorts first (a literal before `*`); "%FF" is not "a", so /v1/*/b serves the path.
    router = _router([("GET", parse("/v1/a/{id}")), ("GET", parse("/v1/*/b"))])
    assert _route(router, "GET", "/v1/%FF/b")[:2] == (Match.FULL, ("GET", "/v1/*/b"))
