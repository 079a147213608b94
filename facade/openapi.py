"""The OpenAPI 3.1 document, from the same bindings that build the router."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from facade.transcoding import Binding


def openapi_document(bindings: Sequence[Binding]) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "invmesh", "version": "1"}, "paths": {}}
