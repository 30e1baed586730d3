"""Gateway auth: configured keys, bearer and subprotocol checks, ephemeral keys (no I/O but tmp files)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from gateway_svc.auth import (
    EPHEMERAL_TTL_DEFAULT_S,
    EPHEMERAL_TTL_MAX_S,
    EPHEMERAL_TTL_MIN_S,
    KeyRing,
    MintRefused,
    Principal,
    key_id_of,
    load_api_keys,
    requested_ttl_s,
)

KEY_A = "sk-test-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb"
NOW = 1_700_000_000.25


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- load_api_keys ---------------------------------------------------------------


def test_keys_from_csv_and_file_trimmed_commented_and_deduplicated(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# operators' keys\n\n  {KEY_B}  \n   # indented comment\n{KEY_A}\n")
    assert load_api_keys(f" {KEY_A} ,, {KEY_A}", str(keys_file)) == [KEY_A, KEY_B]


def test_no_source_gives_no_keys() -> None:
    assert load_api_keys(None, None) == []
    assert load_api_keys("", None) == []


def test_short_key_in_csv_is_refused_naming_the_entry_not_the_key() -> None:
    with pytest.raises(ValueError) as caught:
        load_api_keys(f"{KEY_A},short-secret-1", None)
    message = str(caught.value)
    assert "entry 2" in message and "16" in message
    assert "short-secret-1" not in message


def test_short_key_in_file_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{KEY_A}\n# comment\nhunter2\n")
    with pytest.raises(ValueError) as caught:
        load_api_keys(None, str(keys_file))
    message = str(caught.value)
    assert str(keys_file) in message and "line 3" in message
    assert "hunter2" not in message


def test_key_with_inner_whitespace_or_non_ascii_is_refused() -> None:
    with pytest.raises(ValueError, match="entry 1"):
        load_api_keys("sk-test-aaaa aaaaaaaaaaaa", None)
    with pytest.raises(ValueError, match="entry 1"):
        load_api_keys("sk-test-ääääääääääääääää", None)


def test_missing_keys_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_api_keys(None, str(tmp_path / "absent.txt"))


# --- key ids ---------------------------------------------------------------------


def test_key_id_is_a_short_sha256_fingerprint() -> None:
    key_id = key_id_of(KEY_A)
    assert key_id == hashlib.sha256(KEY_A.encode()).hexdigest()[:16]
    assert len(key_id) == 16 and KEY_A not in key_id
    assert key_id != key_id_of(KEY_B)


def test_keyring_refuses_short_and_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="key 2"):
        KeyRing([KEY_A, "too-short"])
    with pytest.raises(ValueError, match="already configured"):
        KeyRing([KEY_A, KEY_B, KEY_A])


# --- real keys -------------------------------------------------------------------


def test_bearer_with_a_configured_key() -> None:
    ring = KeyRing([KEY_A, KEY_B])
    assert ring.from_bearer(f"Bearer {KEY_B}", NOW) == Principal(key_id_of(KEY_B), ephemeral=False)
    assert ring.from_bearer(f"bearer   {KEY_A} ", NOW) == Principal(key_id_of(KEY_A), ephemeral=False)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Basic {KEY_A}", KEY_A,
                                    "Bearer sk-test-cccccccccccccccc", f"Bearer {KEY_A}x", f"Bearer {KEY_A[:-1]}"])
def test_bearer_refused(header: str | None) -> None:
    assert KeyRing([KEY_A]).from_bearer(header, NOW) is None


def test_empty_keyring_admits_nobody() -> None:
    assert KeyRing([]).from_bearer(f"Bearer {KEY_A}", NOW) is None


def test_subprotocol_key_beside_realtime() -> None:
    ring = KeyRing([KEY_A])
    offered = ["realtime", f"openai-insecure-api-key.{KEY_A}"]
    assert ring.from_subprotocols(offered, NOW) == Principal(key_id_of(KEY_A), ephemeral=False)


@pytest.mark.parametrize("offered", [
    [],
    ["realtime"],
    ["realtime", "openai-insecure-api-key."],
    ["realtime", f"openai-insecure-api-key.{KEY_B}"],
    # Two keys offered: ambiguous, even if one is right.
    ["realtime", f"openai-insecure-api-key.{KEY_A}", f"openai-insecure-api-key.{KEY_B}"],
    ["realtime", f"openai-insecure-api-key-{KEY_A}"],
])
def test_subprotocol_refused(offered: list[str]) -> None:
    assert KeyRing([KEY_A]).from_subprotocols(offered, NOW) is None


# --- ephemeral keys --------------------------------------------------------------


def test_minted_key_is_accepted_as_bearer_and_subprotocol_until_it_expires() -> None:
    ring = KeyRing([KEY_A, KEY_B])
    parent = ring.from_bearer(f"Bearer {KEY_A}", NOW)
    assert parent is not None
    value, expires_at = ring.mint_ephemeral(parent, 600, NOW)
    assert value.startswith("ek_") and KEY_A not in value
    assert expires_at == 1_700_000_600
    expected = Principal(key_id_of(KEY_A), ephemeral=True)
    assert ring.from_bearer(f"Bearer {value}", NOW) == expected
    assert ring.from_subprotocols(["realtime", f"openai-insecure-api-key.{value}"], NOW) == expected
    assert ring.from_bearer(f"Bearer {value}", expires_at - 0.001) == expected
    assert ring.from_bearer(f"Bearer {value}", expires_at) is None
    assert ring.from_bearer(f"Bearer {value}", expires_at + 3600) is None


def test_another_gateway_with_the_same_keys_verifies_a_minted_key() -> None:
    value, _ = KeyRing([KEY_A]).mint_ephemeral(Principal(key_id_of(KEY_A), False), 60, NOW)
    assert KeyRing([KEY_B, KEY_A]).resolve(value, NOW) == Principal(key_id_of(KEY_A), ephemeral=True)


def test_two_mints_give_two_distinct_keys() -> None:
    ring = KeyRing([KEY_A])
    parent = Principal(key_id_of(KEY_A), False)
    assert ring.mint_ephemeral(parent, 60, NOW)[0] != ring.mint_ephemeral(parent, 60, NOW)[0]


def test_tampered_signature_is_refused() -> None:
    ring = KeyRing([KEY_A])
    value, _ = ring.mint_ephemeral(Principal(key_id_of(KEY_A), False), 600, NOW)
    signed, signature = value.rsplit(".", 1)
    flipped = bytearray(unb64(signature))
    flipped[0] ^= 0x01
    assert ring.resolve(f"{signed}.{b64(bytes(flipped))}", NOW) is None
    assert ring.resolve(f"{signed}.{signature[:-2]}", NOW) is None
    assert ring.resolve(signed, NOW) is None


def test_tampered_payload_is_refused() -> None:
    """Pushing the expiry out, or claiming another key's id, breaks the signature."""
    ring = KeyRing([KEY_A, KEY_B])
    value, expires_at = ring.mint_ephemeral(Principal(key_id_of(KEY_A), False), 600, NOW)
    signed, signature = value.rsplit(".", 1)
    payload = json.loads(unb64(signed[len("ek_"):]))
    for changed in ({**payload, "exp": expires_at + 86_400}, {**payload, "kid": key_id_of(KEY_B)}):
        forged = "ek_" + b64(json.dumps(changed, separators=(",", ":"), sort_keys=True).encode())
        assert ring.resolve(f"{forged}.{signature}", NOW) is None


def test_key_signed_with_a_wrong_key_is_refused() -> None:
    """Well formed, naming our key's id and a future expiry, but not signed with our secret."""
    ring = KeyRing([KEY_A])
    payload = {"exp": int(NOW) + 600, "kid": key_id_of(KEY_A), "n": "abc"}
    signed = "ek_" + b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    for wrong_secret in (b"someone else's secret", KEY_A.encode(), KEY_B.encode()):
        signature = hmac.new(wrong_secret, signed.encode(), hashlib.sha256).digest()
        assert ring.resolve(f"{signed}.{b64(signature)}", NOW) is None


def test_key_minted_from_an_unknown_key_is_refused() -> None:
    other = "sk-other-gateway-zzzzzzzz"
    value, _ = KeyRing([other]).mint_ephemeral(Principal(key_id_of(other), False), 600, NOW)
    assert KeyRing([KEY_A]).resolve(value, NOW) is None


def test_removing_the_parent_key_revokes_its_ephemeral_keys() -> None:
    before = KeyRing([KEY_A, KEY_B])
    from_a, _ = before.mint_ephemeral(Principal(key_id_of(KEY_A), False), 600, NOW)
    from_b, _ = before.mint_ephemeral(Principal(key_id_of(KEY_B), False), 600, NOW)
    after = KeyRing([KEY_B])
    assert after.resolve(from_a, NOW) is None
    assert after.resolve(from_b, NOW) == Principal(key_id_of(KEY_B), ephemeral=True)


def test_ephemeral_key_cannot_mint_and_a_removed_key_cannot_either() -> None:
    ring = KeyRing([KEY_A])
    value, _ = ring.mint_ephemeral(Principal(key_id_of(KEY_A), False), 600, NOW)
    ephemeral = ring.resolve(value, NOW)
    assert ephemeral is not None and ephemeral.ephemeral
    with pytest.raises(MintRefused):
        ring.mint_ephemeral(ephemeral, 600, NOW)
    with pytest.raises(MintRefused):
        ring.mint_ephemeral(Principal(key_id_of(KEY_B), False), 600, NOW)


def test_ttl_bounds() -> None:
    ring = KeyRing([KEY_A])
    parent = Principal(key_id_of(KEY_A), False)
    assert ring.mint_ephemeral(parent, EPHEMERAL_TTL_MIN_S, NOW)[1] == 1_700_000_000 + EPHEMERAL_TTL_MIN_S
    assert ring.mint_ephemeral(parent, EPHEMERAL_TTL_MAX_S, NOW)[1] == 1_700_000_000 + EPHEMERAL_TTL_MAX_S
    for ttl_s in (EPHEMERAL_TTL_MIN_S - 1, EPHEMERAL_TTL_MAX_S + 1, 0, -600):
        with pytest.raises(ValueError, match="between"):
            ring.mint_ephemeral(parent, ttl_s, NOW)


@pytest.mark.parametrize("presented", [
    "ek_", "ek_.", "ek_abc", "ek_a.b.c", "ek_!!!!.????", "ek_é.é", "ek_" + "A" * 2000 + ".AAAA",
    "ek_" + b64(b"[1,2]") + ".AAAA", "ek_" + b64(b"not json") + ".AAAA",
    "ek_" + b64(b'{"kid":1,"exp":2}') + ".AAAA", "ek_" + b64(b'{"kid":"x","exp":true}') + ".AAAA",
])
def test_malformed_ephemeral_keys_are_refused(presented: str) -> None:
    assert KeyRing([KEY_A]).resolve(presented, NOW) is None


def test_non_canonical_base64_is_refused() -> None:
    ring = KeyRing([KEY_A])
    value, _ = ring.mint_ephemeral(Principal(key_id_of(KEY_A), False), 600, NOW)
    assert ring.resolve(value + "=", NOW) is None


# --- the GA client_secrets request -----------------------------------------------


def test_requested_ttl_from_expires_after() -> None:
    assert requested_ttl_s(None) == EPHEMERAL_TTL_DEFAULT_S == 600
    assert requested_ttl_s({}) == 600
    assert requested_ttl_s({"anchor": "created_at", "seconds": 60}) == 60
    assert requested_ttl_s({"seconds": 7200}) == 7200


@pytest.mark.parametrize("expires_after", [
    {"anchor": "now", "seconds": 60}, {"seconds": "60"}, {"seconds": 60.5}, {"seconds": True},
    {"seconds": 5}, {"seconds": 7201}, [60], 60,
])
def test_requested_ttl_refused(expires_after: object) -> None:
    with pytest.raises(ValueError, match="expires_after"):
        requested_ttl_s(expires_after)
