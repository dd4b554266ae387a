"""The login gate's pure decisions: password digests, auth-off on loopback only, where secrets come from."""

from __future__ import annotations

from dashboard import auth


def test_plain_password_matches_only_itself() -> None:
    assert auth.verify_password("s3cret", "s3cret") is True
    assert auth.verify_password("s3cret ", "s3cret") is False
    assert auth.verify_password("", "s3cret") is False
    assert auth.verify_password("anything", "") is False


def test_hashed_password_round_trip_and_format() -> None:
    stored = auth.hash_password("hunter2", salt=bytes(16), iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$" + "00" * 16 + "$")
    assert len(stored.rsplit("$", 1)[1]) == 64
    assert auth.verify_password("hunter2", stored) is True
    assert auth.verify_password("hunter3", stored) is False
    # A hash is not itself a password that logs in.
    assert auth.verify_password(stored, stored) is False


def test_malformed_hash_is_treated_as_a_plain_password() -> None:
    assert auth.verify_password("pbkdf2_sha256$x$zz$00", "pbkdf2_sha256$x$zz$00") is True
    assert auth.verify_password("nope", "pbkdf2_sha256$x$zz$00") is False


def test_auth_off_only_on_loopback() -> None:
    assert auth.auth_disabled({"SELFHEAL_DASHBOARD_AUTH": "off"}, "127.0.0.1") == (True, None)
    assert auth.auth_disabled({"SELFHEAL_DASHBOARD_AUTH": "OFF"}, "::1") == (True, None)
    disabled, warning = auth.auth_disabled({"SELFHEAL_DASHBOARD_AUTH": "off"}, "0.0.0.0")
    assert disabled is False and warning.startswith("SELFHEAL_DASHBOARD_AUTH=off is ignored: the server listens on 0.0.0.0")
    disabled, warning = auth.auth_disabled({"SELFHEAL_DASHBOARD_AUTH": "off"}, None)
    assert disabled is False and "listens on all interfaces" in warning
    assert auth.auth_disabled({"SELFHEAL_DASHBOARD_AUTH": "on"}, "127.0.0.1") == (False, None)
    assert auth.auth_disabled({}, "127.0.0.1") == (False, None)


def test_password_source_precedence() -> None:
    env = {"SELFHEAL_DASHBOARD_PASSWORD": "from-env"}
    assert auth.configured_password({"dashboard": {"password": "from-secrets"}}, env) == "from-secrets"
    assert auth.configured_password({}, env) == "from-env"
    assert auth.configured_password({"dashboard": {"password": ""}}, env) == "from-env"
    assert auth.configured_password({}, {}) is None


def test_oidc_providers() -> None:
    assert auth.oidc_providers({}) == []
    assert auth.oidc_providers({"auth": {"client_id": "a", "redirect_uri": "u"}}) == [None]
    assert auth.oidc_providers({"auth": {"redirect_uri": "u", "okta": {"client_id": "a"}, "google": {"client_id": "b"},
                                         "broken": {"x": 1}}}) == ["google", "okta"]


def test_operator_names_are_cleaned() -> None:
    assert auth.clean_operator_name("  alice  ") == "alice"
    assert auth.clean_operator_name("bob\n\x1b[31mroot") == "bob [31mroot"
    assert auth.clean_operator_name("") == "operator"
    assert auth.clean_operator_name(None) == "operator"
    assert auth.clean_operator_name("x" * 100) == "x" * 64


def test_gate_config_usable() -> None:
    assert auth.gate_config({}, {}, "0.0.0.0").usable is False
    assert auth.gate_config({}, {"SELFHEAL_DASHBOARD_PASSWORD": "p"}, "0.0.0.0").usable is True
    assert auth.gate_config({}, {"SELFHEAL_DASHBOARD_AUTH": "off"}, "127.0.0.1").usable is True
