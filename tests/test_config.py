"""Configuration errors name the variable and never echo a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import ConfigError, load_settings, parse_smtp_url


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
