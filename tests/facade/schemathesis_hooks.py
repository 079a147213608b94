"""Loaded by the schemathesis run (SCHEMATHESIS_HOOKS): values for the document's own formats."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st
from iso4217 import Currency

from auth.accounts import normalize_email
from mesh.errors import InvalidArgument


def _deliverable_form(address: str) -> bool:
    try:
        normalize_email(address)
    except InvalidArgument:
        return False
    return True


# "email" is what auth.accounts takes for one: no reserved domains such as `.test`.
schemathesis.openapi.format("email", st.emails().filter(_deliverable_form))

# The price pattern allows USD's 2 decimals (USD is the default); a currency with other minor
# units takes other prices, which the document says only in words (JSON Schema would need a
# rule per currency). The run prices in currencies with 2 minor digits, where the pattern is
# the rule.
schemathesis.openapi.format("iso-4217", st.sampled_from([c.code for c in Currency if c.exponent == 2]))


# The account the run is signed in as (tests/facade/test_schemathesis.py sets it).
CALLER = "INVMESH_SCHEMATHESIS_CALLER"


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    """An admin may not take its own admin role away (400 SELF_DEMOTION, a rule on the caller,
    not on the data): role changes leave the run's own account alone."""
    if context.operation is None or context.operation.label != "POST /users:setRole":
        return True
    email = body.get("email") if isinstance(body, dict) else None
    return not isinstance(email, str) or email.strip().lower() != os.environ[CALLER]


@schemathesis.hook
def filter_query(context: schemathesis.HookContext, query: Any) -> bool:
    """A ledger's time range does not end before it starts (else 400 INVALID_TIME_RANGE), a rule
    between two parameters that OpenAPI cannot state: the run lists ledgers over ranges that
    do not."""
    if context.operation is None or context.operation.label != "GET /inventory/{product_id}/movements":
        return True
    start, end = (query.get(name) if isinstance(query, dict) else None for name in ("start_time", "end_time"))
    if not isinstance(start, str) or not isinstance(end, str):
        return True
    try:
        return dt.datetime.fromisoformat(end) >= dt.datetime.fromisoformat(start)
    except ValueError:  # not a time the service reads: its refusal is what the run checks
        return True
