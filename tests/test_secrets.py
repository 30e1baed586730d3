"""Secrets never reach a log line: every URL and credential form is scrubbed."""

from __future__ import annotations

import pytest

from shared.logs import register_secret, scrub


@pytest.mark.parametrize(("text", "secret"), [
    ("redis://user:hunter22@redis:6379/0", "hunter22"),
    ("rediss://:hunter22@redis:6380", "hunter22"),
    ("connecting to default:hunter22@redis.internal:6379 failed", "hunter22"),
    ("upstream said: invalid key sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
])
def test_credentials_in_every_form_are_scrubbed(text: str, secret: str) -> None:
    assert secret not in scrub(text)
    assert "***" in scrub(text)


def test_a_registered_secret_is_scrubbed_anywhere() -> None:
    register_secret("correct-horse-battery")
    assert scrub("the value correct-horse-battery leaked") == "the value *** leaked"


def test_ordinary_text_is_left_alone() -> None:
    for text in ("ratio 3:4", "mail a@b.com", "conv:{0}:c1:input 1-0", "http://host:8080/path"):
        assert scrub(text) == text
