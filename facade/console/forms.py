"""The console's forms as they arrive: URL-encoded bodies (every form is a plain one, with no
file), read with the facade's body limit, and their numbers read as the services take them."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

INT32 = range(-(2**31), 2**31)


class FormRejected(Exception):
    """A form the console refuses before any call: `status`, and the message to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Form:
    """A submitted form's fields (the first value of each), and the fields it could not read."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.invalid: dict[str, str] = {}

    def text(self, name: str) -> str:
        return self.values.get(name, "").strip()

    def integer(self, name: str) -> int:
        """The field as a whole number; 0 if empty, so that the service names it if it is required."""
        raw = self.text(name)
        if not raw:
            return 0
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value not in INT32:
            self.invalid[name] = "must be a whole number"
            return 0
        return value


async def read_form(request: Request, max_bytes: int) -> Form:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FormRejected(415, "the form must be sent URL-encoded")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise FormRejected(413, f"the form is over the {max_bytes} byte limit")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormRejected(400, "the form could not be read") from exc
    values: dict[str, str] = {}
    for name, value in pairs:
        values.setdefault(name, value)
    return Form(values)
