"""Abuse limits over HTTP: 429 with Retry-After, counted per client address as the facade
forwards it (from X-Forwarded-For only when the facade's peer is a trusted proxy)."""

from __future__ import annotations

import pytest

from mesh.config import Settings
from tests.facade.conftest import Web


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"login_failures_per_account": 100, "login_failures_per_address": 3})


async def test_too_many_failed_logins_from_one_client_is_a_429_with_retry_after(web: Web) -> None:
    # uvicorn trusts its loopback peer (this test), so the client is the X-Forwarded-For address.
    first = {"x-forwarded-for": "203.0.113.10"}
    for n in range(3):
        refused = await web.http.post(
            "/users/login", headers=first, json={"email": f"a{n}@example.com", "password": "wrong password"}
        )
        assert refused.status_code == 401, refused.text
    limited = await web.http.post(
        "/users/login", headers=first, json={"email": "staff@example.com", "password": "mesh-password"}
    )
    assert limited.status_code == 429, limited.text
    assert 0 < int(limited.headers["retry-after"]) <= 900
    body = limited.json()
    assert body["code"] == 8 and body["message"] == "too many failed logins; try again later"
    assert {"@type": "type.googleapis.com/google.rpc.ErrorInfo"}.items() <= body["details"][0].items()
    assert body["details"][0]["reason"] == "TOO_MANY_LOGIN_ATTEMPTS"
    # The RetryInfo too, in snake_case, its delay the Retry-After's.
    (retry,) = [d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert set(retry) == {"@type", "retry_delay"}
    assert 0 < float(retry["retry_delay"].removesuffix("s")) <= int(limited.headers["retry-after"])

    # Another client is not held back by the first one's failures.
    other = await web.http.post(
        "/users/login",
        headers={"x-forwarded-for": "203.0.113.11"},
        json={"email": "staff@example.com", "password": "mesh-password"},
    )
    assert other.status_code == 200, other.text
