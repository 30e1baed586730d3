"""How a process reaches Redis as its user: REDIS_PASSWORD_FILE (the password in
neither the environment nor the URL) and the ``rediss://`` files (REDIS_CA_CERT,
REDIS_CLIENT_CERT, REDIS_CLIENT_KEY): what is refused at start, one line naming
the variable and never a password, and the options the client gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ConnectionSettings, InvalidSettings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "REDIS_PASSWORD_FILE", "REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "some.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # only its existence is checked here
    return path


def test_the_password_comes_from_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "redis_transcriber"
    secret.write_text("hunter2-0123\n")
    monkeypatch.setenv("REDIS_URL", "redis://transcriber@redis:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    settings = load_settings(ConnectionSettings)
    assert settings.redis_password() == "hunter2-0123"
    assert settings.redis_client_options() == {"password": "hunter2-0123"}
    assert "hunter2" not in repr(settings) + str(settings)
    monkeypatch.delenv("REDIS_PASSWORD_FILE")
    assert ConnectionSettings().redis_password() is None and ConnectionSettings().redis_client_options() == {}


@pytest.mark.parametrize(("content", "why"), [("", "holds no password"), ("\n", "holds no password"),
                                              (None, "does not point to a file")])
def test_a_password_file_that_gives_no_password_stops_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(InvalidSettings, match=f"^invalid setting REDIS_PASSWORD_FILE: .*{why}"):
        load_settings(ConnectionSettings)


def test_a_password_in_the_url_and_in_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("from-the-file")
    monkeypatch.setenv("REDIS_URL", "redis://u:from-the-url@h:1/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(InvalidSettings) as refused:
        load_settings(ConnectionSettings)
    assert str(refused.value) == "invalid setting REDIS_PASSWORD_FILE: REDIS_URL carries a password already: " \
                                 "give it in one place"
    assert "from-the" not in str(refused.value)


def test_rediss_gets_the_ca_and_the_client_certificate(pem: Path) -> None:
    settings = ConnectionSettings(redis_url="rediss://conversation@redis:6380/0", redis_ca_cert=pem,
                                  redis_client_cert=pem, redis_client_key=pem)
    assert settings.redis_client_options() == {
        "ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": str(pem),
        "ssl_certfile": str(pem), "ssl_keyfile": str(pem)}
    # No CA given: the system's CAs, still verified.
    assert ConnectionSettings(redis_url="rediss://h:6380/0").redis_client_options() == {
        "ssl_cert_reqs": "required", "ssl_check_hostname": True}


@pytest.mark.parametrize("variables", [["REDIS_CA_CERT"], ["REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"]])
def test_tls_files_with_a_plain_url_are_refused(monkeypatch: pytest.MonkeyPatch, pem: Path,
                                                variables: list[str]) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://h:1/0")
    for variable in variables:
        monkeypatch.setenv(variable, str(pem))
    with pytest.raises(InvalidSettings) as refused:
        load_settings(ConnectionSettings)
    assert str(refused.value).splitlines() == [
        f"invalid setting {v}: is for TLS: REDIS_URL must then be a rediss:// URL" for v in variables]


@pytest.mark.parametrize("given", ["REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"])
def test_a_client_certificate_comes_with_its_key(monkeypatch: pytest.MonkeyPatch, pem: Path, given: str) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://h:1/0")
    monkeypatch.setenv(given, str(pem))
    with pytest.raises(InvalidSettings, match="^invalid setting REDIS_CLIENT_KEY: REDIS_CLIENT_CERT and "
                                              "REDIS_CLIENT_KEY go together"):
        load_settings(ConnectionSettings)
