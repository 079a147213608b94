"""Configuration errors name the variable and never echo a secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mesh.config import ConfigError, load_settings, parse_smtp_url, service_endpoints


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    settings = load_settings(invmesh_data_dir=tmp_path)
    assert settings.database_url("auth") == f"sqlite+aiosqlite:///{tmp_path.resolve()}/auth.db"
    assert settings.smtp_server is None and settings.outbox_dir == tmp_path / "outbox"
    assert settings.auth_addr == "127.0.0.1:50051" and settings.bcrypt_rounds == 12
    assert settings.access_token_ttl_seconds == 900


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INVMESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BCRYPT_ROUNDS", "10")
    monkeypatch.setenv("AUTH_DATABASE_URL", "postgresql+asyncpg://u:pw@db/auth")
    settings = load_settings()
    assert settings.data_dir == tmp_path and settings.bcrypt_rounds == 10
    assert settings.database_url("auth") == "postgresql+asyncpg://u:pw@db/auth"
    assert "pw" not in repr(settings)


def test_errors_name_each_variable_and_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_URL", "http://mailer:s3cr3t-pass@mail.example.com")
    monkeypatch.setenv("BCRYPT_ROUNDS", "3")
    monkeypatch.setenv("PUBLIC_URL", "ftp://example.com")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SMTP_URL" in message and "BCRYPT_ROUNDS" in message and "PUBLIC_URL" in message
    assert "s3cr3t" not in message


def test_smtp_urls() -> None:
    plain = parse_smtp_url("smtp://mail.example.com:2525?starttls=1")
    assert (plain.hostname, plain.port, plain.starttls, plain.implicit_tls) == (
        "mail.example.com",
        2525,
        True,
        False,
    )
    tls = parse_smtp_url("smtps://user%40x:p%3Ass@mail.example.com")
    assert (tls.port, tls.implicit_tls, tls.username, tls.password) == (465, True, "user@x", "p:ss")


def test_only_the_prefixed_data_dir_variable_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVMESH_DATA_DIR", raising=False)
    monkeypatch.setenv("DATA_DIR", "/somewhere/else")
    assert load_settings().data_dir == Path(".invmesh")


def test_log_level_in_any_case_and_ordered_retry_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    for name in ("MAIL", "OUTBOX"):
        monkeypatch.setenv(f"{name}_RETRY_INITIAL_SECONDS", "60")
        monkeypatch.setenv(f"{name}_RETRY_MAX_SECONDS", "10")
        with pytest.raises(ConfigError, match=f"{name}_RETRY_MAX_SECONDS must be at least"):
            load_settings()
        monkeypatch.setenv(f"{name}_RETRY_MAX_SECONDS", "60")
        assert getattr(load_settings(), f"{name.lower()}_retry_max_seconds") == 60


@pytest.mark.parametrize(
    ("value", "endpoints"),
    [
        ("127.0.0.1:50051", ["127.0.0.1:50051"]),
        ("inventory:50053", ["inventory:50053"]),
        ("[::1]:50051", ["[::1]:50051"]),
        ("127.0.0.1:50053, 127.0.0.1:50063", ["127.0.0.1:50053", "127.0.0.1:50063"]),
        ("dns:///inventory:50053", ["inventory:50053"]),
        ("dns://10.0.0.2/inventory:50053", ["inventory:50053"]),
        ("ipv4:10.0.0.5:50053,10.0.0.6:50053", ["10.0.0.5:50053", "10.0.0.6:50053"]),
        ("ipv6:[::1]:50053", ["[::1]:50053"]),
        ("unix:///run/invmesh/auth.sock", ["unix:///run/invmesh/auth.sock"]),
    ],
)
def test_service_addresses_in_every_accepted_form(value: str, endpoints: list[str]) -> None:
    assert service_endpoints(value) == endpoints
    assert load_settings(inventory_addr=value).address("inventory") == value.strip()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("bogus:xx", "the port 'xx' is not a number"),
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:0", "the port 0 is out of range (1-65535)"),
        ("127.0.0.1:65536", "the port 65536 is out of range (1-65535)"),
        ("::1:50051", "put an IPv6 address in brackets"),
        ("[::g]:50051", "is not an IPv6 address"),
        ("in valid:50051", "names no valid host"),
        ("127.0.0.1:50051,127.0.0.1:", "the port '' is not a number"),
        ("dns:///inventory", "is not host:port"),
        ("ipv4:localhost:50051", "'localhost' is not an IPv4 address"),
        ("unix:", "names no socket path"),
        ("", "must be host:port"),
    ],
)
def test_a_bad_service_address_is_named_with_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("AUTH_ADDR", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AUTH_ADDR" in str(caught.value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "the port 0 is out of range (1-65535)"),
        ("8000,70000", "the port 70000 is out of range"),
        ("8000,8001,8000", "lists the port 8000 twice"),
        ("http", "FACADE_PORTS"),
    ],
)
def test_facade_ports_are_distinct_ports_in_range(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("FACADE_PORTS", value)
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load_settings()
    assert "FACADE_PORTS" in str(caught.value)
