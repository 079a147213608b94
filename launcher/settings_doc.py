"""Writes docs/configuration.md from the settings definitions (`mesh.config.Settings`).

`python -m launcher.settings_doc` (`make docs`) rewrites the file; `--check` fails when the
committed file differs from what the settings generate (tests/test_docs.py runs the same check).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from mesh.config import Settings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """\
# Configuration

<!-- Generated from mesh/config.py by `make docs` (python -m launcher.settings_doc). Do not edit. -->

Every setting comes from an environment variable. The variables are read and validated once
at startup (`mesh/config.py`). Every service reads the same settings and uses the ones it
needs. Names are case-insensitive, and so is the value of `LOG_LEVEL`; other values are
taken as written. Lists are comma-separated (`FACADE_PORTS=8000,8001`) or a JSON list.

Settings marked **secret** show no default here. For them an empty value means unset, and
the program keeps their values out of `repr()`, and out of error messages.

An invalid setting stops `invmesh` before anything starts. The message names each variable
at fault and never shows a secret value:

```
$ BCRYPT_ROUNDS=3 PUBLIC_URL=ftp://x .venv/bin/invmesh serve auth
invmesh: invalid configuration:
  BCRYPT_ROUNDS: Input should be greater than or equal to 4
  PUBLIC_URL: Value error, must be an http:// or https:// URL
```

`MAIL_RETRY_MAX_SECONDS` must be at least `MAIL_RETRY_INITIAL_SECONDS`, and
`OUTBOX_RETRY_MAX_SECONDS` at least `OUTBOX_RETRY_INITIAL_SECONDS`.

| Variable | Type | Default | Constraints |
|---|---|---|---|
"""


def _type_name(annotation: object) -> str:
    """A short, reader's name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return _type_name(present[0]) if len(present) == 1 else " or ".join(map(_type_name, present))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    names: dict[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
    names.update({Path: "path", SecretStr: "string"})
    return names.get(annotation) or str(getattr(annotation, "__name__", annotation))


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _default(field: FieldInfo) -> str:
    if _is_secret(field):
        return "none (secret)"
    value = field.default
    if value is None or value == []:
        return "unset"
    if isinstance(value, list):
        return "`" + ",".join(str(item) for item in value) + "`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _constraints(field: FieldInfo) -> str:
    parts: list[str] = []
    for item in field.metadata:
        if isinstance(item, Ge):
            parts.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"≤ {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
        elif isinstance(item, MinLen):
            parts.append("not empty" if item.min_length == 1 else f"at least {item.min_length} items")
    return ", ".join(parts)


def render() -> str:
    """The whole of docs/configuration.md."""
    rows: list[str] = []
    sections: list[str] = []
    for name, field in Settings.model_fields.items():
        variable = name.upper()
        secret = " **secret**" if _is_secret(field) else ""
        rows.append(
            f"| [`{variable}`](#{name}){secret} | {_type_name(field.annotation)} "
            f"| {_default(field)} | {_constraints(field)} |"
        )
        if not field.description:
            raise ValueError(f"Settings.{name} has no description")
        sections.append(f"### {variable}\n\n{field.description}\n")
    return HEADER + "\n".join(rows) + "\n\n## Settings\n\n" + "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.settings_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed file has drifted")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.name} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
