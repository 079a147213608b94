"""No secret reaches a log record: the whole REST journey at DEBUG, every logger captured raw
(message, arguments, extra fields, exception text) and as the services format it."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from auth.models import User
from mesh.db import Database
from mesh.logs import LogFormatter
from tests.conftest import SmtpServer
from tests.facade.conftest import Web

# The test's own mail server and HTTP client: they see the mail and the URLs by design.
HARNESS = ("mail.log", "httpx", "httpcore")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(HARNESS):
            self.records.append(record)

    def texts(self) -> Iterator[tuple[str, str]]:
        """Everything a record holds that a handler could write, raw and formatted, by logger."""
        formatter = LogFormatter("test", "json")
        for record in self.records:
            texts = [record.getMessage(), repr(record.msg) + repr(record.args), repr(vars(record))]
            if record.exc_info:
                texts.append(formatter.formatException(record.exc_info))
            texts.append(formatter.format(record))
            yield from ((record.name, text) for text in texts)


@pytest.fixture
def debug_logs() -> Iterator[Records]:
    """Every log record from now on, at DEBUG (requested before `web`, so startup is in it)."""
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.own_mesh  # the mesh starting, and its users signing up, log too
async def test_no_secret_reaches_a_log_record_at_debug(
    debug_logs: Records, web: Web, smtp: SmtpServer
) -> None:
    http = web.http
    password = "Sup3r-secret passphrase"
    registered = await http.post("/users/register", json={"email": "quiet@example.com", "password": password})
    assert registered.status_code == 202, registered.text
    (mail,) = await smtp.inbox.mail_to("quiet@example.com")
    body = mail.get_body(("plain",))
    assert body is not None
    link = re.search(r"https?://\S+", body.get_content())
    assert link is not None
    verification = link.group(0).split("token=", 1)[1]
    assert (await http.get(link.group(0))).status_code == 200
    assert (await http.get(link.group(0))).status_code == 400  # spent: failures log too

    wrong = await http.post("/users/login", json={"email": "quiet@example.com", "password": password + "!"})
    assert wrong.status_code == 401
    login = await http.post("/users/login", json={"email": "quiet@example.com", "password": password})
    assert login.status_code == 200, login.text
    tokens = login.json()
    refreshed = await http.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    reused = await http.post("/users/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401  # the reuse revokes the family, and logs
    me = {"authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (await http.get("/users/me", headers=me)).status_code == 200
    forged = {"authorization": f"Bearer {tokens['access_token']}x"}
    assert (await http.get("/products", headers=forged)).status_code == 401

    product = await http.post(
        "/products", headers=web.staff, json={"sku": "QUIET-1", "name": "Quiet lamp", "price": "10.00"}
    )
    assert product.status_code == 201, product.text
    movement = await http.post(
        "/inventory",
        headers=web.staff,
        json={
            "product_id": product.json()["id"],
            "type": "IN",
            "quantity": 5,
            "request_id": str(uuid.uuid4()),
        },
    )
    assert movement.status_code == 201, movement.text
    assert (await http.get("/products", headers=me)).status_code == 200
    logout = await http.post("/users/logout", json={"refresh_token": refreshed.json()["refresh_token"]})
    assert logout.status_code == 200, logout.text

    db = Database(web.mesh.settings.database_url("auth"))
    try:
        async with db.session() as session:
            hashes = list((await session.scalars(select(User.password_hash))).all())
    finally:
        await db.dispose()
    secrets = {
        "password": password,
        "mesh password": "mesh-password",
        "verification token": verification,
        "verification token, in part": verification[:20],  # as a mail line wrapped in the middle would show
        "verification link": link.group(0),
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "refresh token, in part": tokens["refresh_token"][:20],
        "refreshed access token": refreshed.json()["access_token"],
        "refreshed refresh token": refreshed.json()["refresh_token"],
        "staff access token": web.mesh.verified_token,
        "visitor access token": web.mesh.unverified_token,
        "bcrypt prefix": "$2b$",
        **{f"bcrypt hash {n}": h for n, h in enumerate(hashes)},
    }
    assert len(debug_logs.records) > 50  # DEBUG really was on
    leaks = {
        f"{name} in {logger}": text[:300]
        for logger, text in debug_logs.texts()
        for name, secret in secrets.items()
        if secret in text
    }
    assert sorted(leaks) == []
