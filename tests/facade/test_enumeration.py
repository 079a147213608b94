"""Nothing at the edge tells which email addresses have accounts: register, login and verify
answer a known address exactly as an unknown one, status, headers that matter and body. (Their
latencies are compared by `bench/enumeration.py`, not here: timing belongs to benchmarks.)"""

from __future__ import annotations

import httpx

from tests.conftest import SmtpServer
from tests.facade.conftest import Web

KNOWN = "staff@example.com"  # the mesh's verified user
KNOWN_UNVERIFIED = "visitor@example.com"


def answer(response: httpx.Response) -> tuple[int, str, bytes]:
    return response.status_code, response.headers.get("content-type", ""), response.content


async def test_known_and_unknown_addresses_get_the_same_answers(web: Web, smtp: SmtpServer) -> None:
    http = web.http
    for known in (KNOWN, KNOWN_UNVERIFIED):
        unknown = f"nobody-{known}"
        for path, body in [
            ("/users/register", {"email": "{}", "password": "a long password", "name": "Ann"}),
            ("/users/login", {"email": "{}", "password": "not the password"}),
            ("/users/verify", {"email": "{}"}),
        ]:
            said = {}
            for address in (known, unknown):
                fields = {k: v.format(address) if k == "email" else v for k, v in body.items()}
                said[address] = answer(await http.post(path, json=fields))
            status, _, content = said[unknown]
            assert status < 500, (path, content)
            # The body names the address typed, so compare with it put back.
            known_answer = said[known][0], said[known][1], said[known][2].replace(known.encode(), b"@")
            unknown_answer = (
                said[unknown][0],
                said[unknown][1],
                said[unknown][2].replace(unknown.encode(), b"@"),
            )
            assert known_answer == unknown_answer, (path, known, said)
