"""Path templates of google.api.http rules: the grammar, matching and decoding of http.proto."""

from __future__ import annotations

import pytest

from facade.httprule import Kind, PathError, TemplateError, check_escapes, parse

# --- parsing ---------------------------------------------------------------------------------------------


def test_a_plain_variable_is_one_star_segment() -> None:
    template = parse("/v1/items/{id}")
    assert [s.kind for s in template.segments] == [Kind.LITERAL, Kind.LITERAL, Kind.STAR]
    assert [s.literal for s in template.segments[:2]] == ["v1", "items"]
    (variable,) = template.variables
    assert (variable.field_path, variable.start, variable.end) == (("id",), 2, 3)
    assert template.verb == ""


def test_a_nested_field_path() -> None:
    (variable,) = parse("/v1/{a.b.c}").variables
    assert variable.field_path == ("a", "b", "c")
    assert variable.name == "a.b.c"


def test_a_variable_with_a_template_spans_its_segments() -> None:
    template = parse("/v1/{name=shelves/*/books/*}")
    kinds = [Kind.LITERAL, Kind.LITERAL, Kind.STAR, Kind.LITERAL, Kind.STAR]
    assert [s.kind for s in template.segments] == kinds
    (variable,) = template.variables
    assert (variable.name, variable.start, variable.end) == ("name", 1, 5)


def test_anonymous_wildcards_and_a_trailing_double_star() -> None:
    template = parse("/v1/*/x/**")
    assert [s.kind for s in template.segments] == [
        Kind.LITERAL,
        Kind.STAR,
        Kind.LITERAL,
        Kind.DOUBLE_STAR,
    ]
    assert template.variables == ()


def test_a_double_star_variable() -> None:
    template = parse("/v1/files/{path=**}")
    assert template.segments[-1].kind is Kind.DOUBLE_STAR
    assert template.variables[0].name == "path"


def test_a_verb_follows_the_last_segment_even_a_variable_or_double_star() -> None:
    assert parse("/v1/items/{id}:cancel").verb == "cancel"
    assert parse("/v1/{name=**}:undelete").verb == "undelete"
    assert parse("/v1/items:batchGet").verb == "batchGet"
    assert parse("/v1/items:batchGet").segments[-1].literal == "items"


def test_equal_shapes_whatever_the_variable_names() -> None:
    assert parse("/v1/items/{id}").shape == parse("/v1/items/{name}").shape
    assert parse("/v1/{name=items/*}").shape == parse("/v1/items/{id}").shape
    assert parse("/v1/items/{id}").shape != parse("/v1/items/{id}:cancel").shape
    assert parse("/v1/items/{id}").shape != parse("/v1/items/search").shape


@pytest.mark.parametrize(
    "text",
    [
        "v1/items",  # no leading "/"
        "",
        "/",
        "/v1/**/items",  # "**" not last
        "/v1/{name=**}/items",
        "/v1/{a={b}}",  # a variable within a variable
        "/v1/{a=x/{b}}",
        "/v1/{1a}",  # not an identifier
        "/v1/{a..b}",
        "/v1/{a.}",
        "/v1/{}",
        "/v1/{a-b}",
        "/v1/{id}/x/{id}",  # a field bound twice
        "/v1/{a.b}/{a.b}",
        "/v1/{id",  # unclosed
        "/v1/id}",
        "/v1//items",  # an empty segment
        "/v1/items/",
        "/v1/it*ms",
        "/v1/items:",  # an empty verb
        "/v1/items:a/b",
        "/v1/items:a:b",
        "/v1/{id}x",  # something glued to a variable
        "/v1/{id=a:b}",
        "/v1/items?x=1",
        "/v1/%41",
    ],
)
def test_invalid_templates_raise(text: str) -> None:
    with pytest.raises(TemplateError):
        parse(text)


def test_an_empty_variable_template_is_invalid() -> None:
    with pytest.raises(TemplateError):
        parse("/v1/{name=}")


# --- matching and decoding -------------------------------------------------------------------------------


def test_literal_segments_match_exactly() -> None:
    template = parse("/v1/items")
    assert template.match("/v1/items") == {}
    assert template.match("/v1/item") is None
    assert template.match("/v1/items/x") is None
    assert template.match("/v1") is None
    assert template.match("/v1/items/") is None
    assert template.match("v1/items") is None


def test_a_literal_matches_its_percent_encoded_form() -> None:
    assert parse("/v1/items").match("/v1/%69tems") == {}


def test_a_single_segment_variable_is_fully_decoded() -> None:
    template = parse("/v1/items/{id}")
    assert template.match("/v1/items/abc") == {"id": "abc"}
    assert template.match("/v1/items/a%2Fb") == {"id": "a/b"}
    assert template.match("/v1/items/a%2fb") == {"id": "a/b"}
    assert template.match("/v1/items/%E2%82%AC%20%25%3F%23") == {"id": "€ %?#"}
    assert template.match("/v1/items/a+b") == {"id": "a+b"}  # "+" is not a space in a path


def test_a_single_segment_variable_never_spans_segments_or_matches_empty() -> None:
    template = parse("/v1/items/{id}")
    assert template.match("/v1/items/a/b") is None
    assert template.match("/v1/items/") is None
    assert template.match("/v1/items") is None


def test_a_multi_segment_variable_keeps_encoded_slashes_as_sent() -> None:
    template = parse("/v1/{name=shelves/*/books/*}")
    assert template.match("/v1/shelves/s1/books/b%2F2") == {"name": "shelves/s1/books/b%2F2"}
    assert template.match("/v1/shelves/s1/books/b%2f2") == {"name": "shelves/s1/books/b%2f2"}
    assert template.match("/v1/shelves/s%201/books/%C3%A9") == {"name": "shelves/s 1/books/é"}
    assert template.match("/v1/shelves/s1/books") is None
    assert template.match("/v1/shelves/s1/tomes/b") is None
    assert template.match("/v1/shelves//books/b") is None


def test_double_star_matches_zero_or_more_segments() -> None:
    template = parse("/v1/files/{path=**}")
    assert template.match("/v1/files") == {"path": ""}
    assert template.match("/v1/files/a") == {"path": "a"}
    assert template.match("/v1/files/a/b/c") == {"path": "a/b/c"}
    assert template.match("/v1/files/a%2Fb/c%20d") == {"path": "a%2Fb/c d"}
    assert template.match("/v1/file") is None
    assert template.match("/v2/files/a") is None


def test_an_anonymous_double_star_binds_nothing() -> None:
    template = parse("/v1/raw/**")
    assert template.match("/v1/raw/a/b") == {}
    assert template.match("/v1/raw") == {}


def test_a_double_star_variable_after_a_literal_prefix() -> None:
    template = parse("/v1/{name=projects/*/files/**}")
    assert template.match("/v1/projects/p/files/a/b") == {"name": "projects/p/files/a/b"}
    assert template.match("/v1/projects/p/files") == {"name": "projects/p/files"}
    assert template.match("/v1/projects/p") is None


def test_anonymous_star_segments_must_be_present() -> None:
    template = parse("/v1/wild/*/items/{id}")
    assert template.match("/v1/wild/any/items/7") == {"id": "7"}
    assert template.match("/v1/wild//items/7") is None


def test_nested_field_paths_are_named_with_dots() -> None:
    template = parse("/v1/{a.b}/x/{a.c.d}")
    assert template.match("/v1/one/x/two") == {"a.b": "one", "a.c.d": "two"}


def test_a_verb_must_be_present_and_is_not_part_of_the_variable() -> None:
    template = parse("/v1/items/{id}:cancel")
    assert template.match("/v1/items/7:cancel") == {"id": "7"}
    assert template.match("/v1/items/7") is None
    assert template.match("/v1/items/7:undelete") is None
    assert template.match("/v1/items/:cancel") is None
    assert template.match("/v1/items/7%3Acancel") is None  # an encoded colon is data, not a verb


def test_a_verb_after_a_double_star_variable() -> None:
    template = parse("/v1/{name=**}:undelete")
    assert template.match("/v1/a/b:undelete") == {"name": "a/b"}
    assert template.match("/v1/a/b") is None


def test_without_a_verb_a_colon_is_data() -> None:
    assert parse("/v1/items/{id}").match("/v1/items/a:b") == {"id": "a:b"}


def test_variables_that_do_not_decode_raise() -> None:
    template = parse("/v1/items/{id}")
    with pytest.raises(PathError):
        template.match("/v1/items/%FF")  # not UTF-8
    with pytest.raises(PathError):
        template.match("/v1/items/%ED%A0%80")  # an encoded surrogate is not UTF-8 either
    with pytest.raises(PathError):
        parse("/v1/{name=**}").match("/v1/a/%C3")  # a truncated sequence


@pytest.mark.parametrize("path", ["/v1/items/%zz", "/v1/items/%", "/v1/items/a%2", "/v1/%G0", "/%"])
def test_malformed_escapes_are_refused(path: str) -> None:
    with pytest.raises(PathError):
        check_escapes(path)


@pytest.mark.parametrize("path", ["/v1/items/%2F", "/v1/items/%e2%82%ac", "/v1/items/plain"])
def test_well_formed_escapes_pass(path: str) -> None:
    check_escapes(path)


# --- precedence ------------------------------------------------------------------------------------------


def _ordered(*texts: str) -> list[str]:
    return [t.text for t in sorted((parse(text) for text in texts), key=lambda t: t.precedence)]


def test_a_literal_beats_a_variable_whatever_the_order_given() -> None:
    assert _ordered("/v1/items/{id}", "/v1/items/search") == ["/v1/items/search", "/v1/items/{id}"]
    assert _ordered("/v1/{kind}/search", "/v1/items/{id}") == ["/v1/items/{id}", "/v1/{kind}/search"]


def test_a_single_star_beats_a_double_star() -> None:
    assert _ordered("/v1/{name=**}", "/v1/{id}", "/v1/x") == ["/v1/x", "/v1/{id}", "/v1/{name=**}"]


def test_templates_with_a_verb_come_first() -> None:
    assert _ordered("/v1/items/{id}", "/v1/{name=**}:get") == ["/v1/{name=**}:get", "/v1/items/{id}"]


def test_the_first_match_in_precedence_order_is_the_most_specific() -> None:
    templates = sorted(
        (parse(t) for t in ("/v1/{name=**}", "/v1/items/{id}", "/v1/items/search", "/v1/items/{id}:cancel")),
        key=lambda t: t.precedence,
    )

    def first(path: str) -> str:
        return next(t.text for t in templates if t.match(path) is not None)

    assert first("/v1/items/search") == "/v1/items/search"
    assert first("/v1/items/7") == "/v1/items/{id}"
    assert first("/v1/items/7:cancel") == "/v1/items/{id}:cancel"
    assert first("/v1/items/7/more") == "/v1/{name=**}"
