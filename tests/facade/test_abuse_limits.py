"""Abuse limits over HTTP: 429 with Retry-After, counted per client address as the facade
forwards it: the TCP peer's, or a load balancer's X-Forwarded-For when TRUSTED_PROXIES lists
the load balancer (by default none, loopback neither)."""

from __future__ import annotations

import pytest

from mesh.config import Settings, load_settings
from tests.facade.conftest import Web


@pytest.fixture
def trusted_proxies() -> list[str]:
    return []  # the default


@pytest.fixture
def settings(settings: Settings, trusted_proxies: list[str]) -> Settings:
    return settings.model_copy(
        update={
            "login_failures_per_account": 100,
            "login_failures_per_address": 3,
            "trusted_proxies": trusted_proxies,
        }
    )


async def test_by_default_a_rotating_x_forwarded_for_from_loopback_hits_the_per_address_limit(
    web: Web,
) -> None:
    assert load_settings().trusted_proxies == []
    for n in range(3):
        refused = await web.http.post(
            "/users/login",
            headers={"x-forwarded-for": f"203.0.113.{n}"},
            json={"email": f"a{n}@example.com", "password": "wrong password"},
        )
        assert refused.status_code == 401, refused.text
    limited = await web.http.post(
        "/users/login",
        headers={"x-forwarded-for": "198.51.100.77"},
        json={"email": "staff@example.com", "password": "mesh-password"},
    )
    assert limited.status_code == 429, limited.text
    assert limited.json()["details"][0]["reason"] == "TOO_MANY_LOGIN_ATTEMPTS"


@pytest.mark.parametrize("trusted_proxies", [["127.0.0.1"]])
async def test_behind_a_trusted_load_balancer_each_forwarded_client_has_its_own_limit(web: Web) -> None:
    # The test is the load balancer (127.0.0.1, listed): the client is its X-Forwarded-For address.
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
