"""The verification link opened in a browser: a small HTML page saying the address is
confirmed, or why not, with the status of the JSON answer; JSON clients get JSON as before."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from tests.conftest import SmtpServer, link_token
from tests.facade.conftest import Web, facade_client

BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
EMAIL = "o'neil&co@example.com"  # what the page shows escaped


async def registered_token(web: Web, smtp: SmtpServer) -> str:
    registered = await web.http.post("/users/register", json={"email": EMAIL, "password": "a long password"})
    assert registered.status_code == 202, registered.text
    (mail,) = await smtp.inbox.mail_to(EMAIL)
    return link_token(mail, web.mesh.settings.public_url)


def assert_page(response_headers: dict[str, str], text: str) -> None:
    assert response_headers["content-type"] == "text/html; charset=utf-8"
    # Nothing may load, and the one inline style is allowed by its hash.
    style = re.search(r"<style>(.*?)</style>", text, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    policy = response_headers["content-security-policy"]
    assert policy.startswith(f"default-src 'none'; style-src 'sha256-{digest}';"), policy
    assert response_headers["referrer-policy"] == "no-referrer"
    assert response_headers["cache-control"] == "no-store"
    assert "<script" not in text and "http" not in text.split("<body>")[1]  # self-contained


async def test_a_browser_opening_the_link_sees_the_address_confirmed(web: Web, smtp: SmtpServer) -> None:
    token = await registered_token(web, smtp)
    confirmed = await web.http.get("/users/verify", params={"token": token}, headers=BROWSER)
    assert confirmed.status_code == 200, confirmed.text
    assert_page(dict(confirmed.headers), confirmed.text)
    assert "<h1>Address confirmed</h1>" in confirmed.text
    assert "o&#x27;neil&amp;co@example.com is confirmed" in confirmed.text and EMAIL not in confirmed.text
    # The same call confirmed it: the account is verified.
    login = await web.http.post("/users/login", json={"email": EMAIL, "password": "a long password"})
    me = await web.http.get("/users/me", headers={"authorization": f"Bearer {login.json()['access_token']}"})
    assert me.json()["email_verified"] is True

    # Opened again, the link is spent: a 400 page saying so.
    again = await web.http.get("/users/verify", params={"token": token}, headers=BROWSER)
    assert again.status_code == 400
    assert_page(dict(again.headers), again.text)
    assert "<h1>This link no longer works</h1>" in again.text


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ({"token": "unknown-token"}, "This link no longer works"),
        ({}, "This link is incomplete"),
        ({"token": "x", "utm_source": "mail"}, "This link is incomplete"),  # the facade's own refusal
    ],
)
async def test_a_browser_opening_a_bad_link_sees_why(web: Web, query: dict[str, str], title: str) -> None:
    refused = await web.http.get("/users/verify", params=query, headers=BROWSER)
    assert refused.status_code == 400
    assert_page(dict(refused.headers), refused.text)
    assert f"<h1>{title}</h1>" in refused.text


async def test_json_clients_get_json_as_before(web: Web, smtp: SmtpServer) -> None:
    token = await registered_token(web, smtp)
    for accept in (
        "application/json",
        "*/*",
        "application/json, text/html",
        "text/html;q=0.5, application/json",
    ):
        refused = await web.http.get("/users/verify", params={"token": "unknown"}, headers={"accept": accept})
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
        assert refused.json()["details"][0]["reason"] == "INVALID_VERIFICATION_TOKEN"
        assert refused.headers["vary"] == "Accept"
    confirmed = await web.http.get("/users/verify", params={"token": token})
    assert confirmed.status_code == 200 and confirmed.json()["user"]["email"] == EMAIL


async def test_a_browser_sees_when_the_service_is_unavailable(web: Web) -> None:
    down = web.mesh.settings.model_copy(update={"auth_addr": "127.0.0.1:1"})
    async with facade_client(down) as http:
        refused = await http.get("/users/verify", params={"token": "t"}, headers=BROWSER)
    assert refused.status_code == 503
    assert_page(dict(refused.headers), refused.text)
    assert "<h1>The service is unavailable</h1>" in refused.text
