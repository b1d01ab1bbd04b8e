"""The pure parts of agents by mail: tokens, commands, identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from maild.agents.commands import parse_commands
from maild.agents.identity import authenticated, decide
from maild.agents.tokens import Keyring, agent_tag, read_message_id, read_reply_address
from maild.config import load_settings, parse_settings
from maild.errors import ConfigError
from maild.rules.teams import Agent, Directory, Team

ANNA = "anna@example.com"
BENCE = "bence@example.com"
KEY1 = b"k1-secret-for-tests-0123456789"
KEY2 = b"k2-secret-for-tests-9876543210"


def directory() -> Directory:
    def agent(address: str, active: bool = True) -> Agent:
        return Agent(
            address,
            address.split("@")[0].title(),
            ("first-line",),
            frozenset(),
            frozenset(),
            active,
        )

    return Directory(
        teams={
            "first-line": Team("first-line", 1, ANNA, (ANNA, BENCE)),
            "tier2": Team("tier2", 2, None, ()),
        },
        agents={
            ANNA: agent(ANNA),
            BENCE: agent(BENCE),
            "old@example.com": agent("old@example.com", False),
        },
    )


# ---------------------------------------------------------------- tokens


def test_reply_address_round_trips_and_verifies_only_for_its_agent() -> None:
    ring = Keyring({1: KEY1}, None)
    address = ring.reply_address("support@example.com", "1042", ANNA)
    assert address.startswith(f"support+t1042.a{agent_tag(ANNA)}.k1.")
    assert address.endswith("@example.com")
    token = read_reply_address(address)
    assert token is not None and token.ticket == "1042" and token.key_id == 1
    assert ring.verify(token, ANNA)
    assert ring.verify(token, ANNA.upper())  # addresses compare case-insensitively
    assert not ring.verify(token, BENCE)


def test_tampered_ticket_or_mac_is_refused() -> None:
    ring = Keyring({1: KEY1}, None)
    address = ring.reply_address("support@example.com", "1042", ANNA)
    token = read_reply_address(address.replace("t1042", "t1043"))
    assert token is not None and not ring.verify(token, ANNA)
    local, _, domain = address.partition("@")
    flipped = local[:-1] + ("0" if local[-1] != "0" else "1") + "@" + domain
    token = read_reply_address(flipped)
    assert token is not None and not ring.verify(token, ANNA)
    # A MAC shortened by the sender is not accepted as a weaker proof.
    token = read_reply_address(local[:-4] + "@" + domain)
    assert token is not None and not ring.verify(token, ANNA)


def test_key_rotation_keeps_old_tokens_valid_while_their_key_is_configured() -> None:
    old = Keyring({1: KEY1}, None)
    address = old.reply_address("support@example.com", "7", ANNA)
    rotated = Keyring({1: KEY1, 2: KEY2}, None)
    assert rotated.current == 2
    assert "k2." in rotated.reply_address("support@example.com", "7", ANNA)
    token = read_reply_address(address)
    assert token is not None and rotated.verify(token, ANNA)
    retired = Keyring({2: KEY2}, None)
    assert not retired.verify(token, ANNA)
    # A different secret under the same id is a different key.
    assert not Keyring({1: KEY2}, None).verify(token, ANNA)


def test_addresses_without_token_are_not_tokens() -> None:
    for address in ("support@example.com", "support+billing@example.com", "x+t1.a12.k1.ab@e.x"):
        assert read_reply_address(address) is None


def test_signed_message_id_names_ticket_and_agent() -> None:
    ring = Keyring({3: KEY1}, None)
    first = ring.message_id("example.com", "55", ANNA)
    second = ring.message_id("example.com", "55", ANNA)
    assert first != second and first.startswith("<t55.") and first.endswith("@example.com>")
    token = read_message_id(first)
    assert token is not None and token.ticket == "55" and ring.verify(token, ANNA)
    assert not ring.verify(token, BENCE)
    assert read_message_id("<abc@example.com>") is None


def test_without_keys_nothing_is_signed_or_verified() -> None:
    ring = Keyring({}, None)
    assert not ring.can_sign
    assert ring.reply_address("support@example.com", "1", ANNA) == "support@example.com"
    token = read_reply_address(Keyring({1: KEY1}, None).reply_address("s@e.x", "1", ANNA))
    assert token is not None and not ring.verify(token, ANNA)


def test_keys_come_from_config_or_environment() -> None:
    settings = parse_settings(
        {
            "agents": {
                "keys": [{"id": 1, "secret_env": "AGENT_KEY"}, {"id": 2, "secret": KEY2.decode()}],
                "signing_key": 1,
            }
        },
        "<test>",
    )
    ring = Keyring.from_settings(settings.agents, env={"AGENT_KEY": KEY1.decode()})
    assert ring.current == 1
    token = read_reply_address(ring.reply_address("s@example.com", "9", ANNA))
    assert token is not None and Keyring({1: KEY1}, None).verify(token, ANNA)
    with pytest.raises(ConfigError, match="AGENT_KEY is not set"):
        Keyring.from_settings(settings.agents, env={})
    with pytest.raises(ConfigError, match="exactly one of 'secret' and 'secret_env'"):
        parse_settings({"agents": {"keys": [{"id": 1}]}}, "<test>")
    with pytest.raises(ConfigError, match="no key with id 5"):
        parse_settings(
            {"agents": {"keys": [{"id": 1, "secret": "x" * 20}], "signing_key": 5}}, "<test>"
        )


def test_reply_and_internal_addresses_are_support_addresses() -> None:
    settings = parse_settings(
        {"agents": {"internal_address": "Support-Comment@example.com"}}, "<test>"
    )
    assert settings.is_support_address("support+t1.a0123abcd.k1.00ff@example.com")
    assert settings.is_support_address("support-comment@example.com")
    assert not settings.is_support_address("other+t1@example.com")


# ---------------------------------------------------------------- commands


def test_each_command_is_read_and_removed_from_the_text() -> None:
    text = (
        "#assign me\n#status pending\n#priority HIGH\n#tier 2\n#queue billing\n"
        "#type incident\n#tag +vip -new plain\n\nHello Alice,\n\n#not a command here\n"
    )
    parsed = parse_commands(text, ANNA, directory())
    assert parsed.errors == ()
    assert [(c.name, c.value) for c in parsed.commands] == [
        ("assign", ("agent", ANNA)),
        ("status", ("pending",)),
        ("priority", ("high",)),
        ("tier", ("2",)),
        ("queue", ("billing",)),
        ("type", ("incident",)),
        ("tag", ("+vip", "-new", "+plain")),
    ]
    assert parsed.body == "Hello Alice,\n\n#not a command here\n"
    assert not parsed.note and not parsed.nosend


def test_assign_to_agent_or_team() -> None:
    d = directory()
    assert parse_commands("#assign bence@example.com\n", ANNA, d).commands[0].value == (
        "agent",
        BENCE,
    )
    assert parse_commands("#assign tier2\n", ANNA, d).commands[0].value == ("team", "tier2")


def test_note_nosend_and_command_only_mail() -> None:
    parsed = parse_commands("#note\n#nosend\n", ANNA, directory())
    assert parsed.note and parsed.nosend and parsed.body == "" and parsed.errors == ()


def test_invalid_commands_are_all_reported() -> None:
    text = (
        "#status sleeping\n#assign nobody\n#assign old@example.com\n"
        "#frobnicate\n#note x\n#tag\nHi\n"
    )
    parsed = parse_commands(text, ANNA, directory())
    assert len(parsed.errors) == 6
    assert "status must be one of open, pending, resolved, closed" in parsed.errors[0]
    assert "no agent or team called 'nobody'" in parsed.errors[1]
    assert "not active" in parsed.errors[2]
    assert "unknown command #frobnicate" in parsed.errors[3]
    assert "takes no argument" in parsed.errors[4]
    assert parsed.body == "Hi\n"


def test_a_text_without_commands_is_unchanged() -> None:
    parsed = parse_commands("Hello,\n#status closed\n", ANNA, directory())
    assert (
        parsed.commands == () and parsed.errors == () and parsed.body == "Hello,\n#status closed\n"
    )


# ---------------------------------------------------------------- identity

TRUSTED = ("mx.example.net",)


def test_dkim_pass_aligned_from_trusted_relay_counts() -> None:
    header = "mx.example.net; dkim=pass header.d=example.com header.s=s1; spf=fail"
    assert authenticated([header], ANNA, TRUSTED) == (
        "dkim=pass header.d=example.com (mx.example.net)",
    )
    # a parent domain aligns (relaxed), a sibling does not
    assert authenticated([header], "x@mail.example.com", TRUSTED)
    assert not authenticated([header], "x@example.org", TRUSTED)


def test_spf_pass_counts_only_for_the_agents_domain() -> None:
    good = "mx.example.net; spf=pass smtp.mailfrom=anna@example.com"
    bad = "mx.example.net; spf=pass smtp.mailfrom=evil@attacker.example"
    assert authenticated([good], ANNA, TRUSTED)
    assert not authenticated([bad], ANNA, TRUSTED)


def test_untrusted_failing_or_broken_results_are_ignored() -> None:
    headers = [
        "attacker.example; dkim=pass header.d=example.com",
        "mx.example.net; dkim=fail header.d=example.com",
        "mx.example.net; dkim=pass header.d=com",
        "garbage ;;; =",
    ]
    assert authenticated(headers, ANNA, TRUSTED) == ()


def test_policies_combine_token_and_authentication() -> None:
    auth = ("dkim=pass header.d=example.com (mx.example.net)",)
    assert decide("token_or_auth", True, ()).verified
    assert decide("token_or_auth", False, auth).verified
    assert not decide("token_or_auth", False, ()).verified
    assert not decide("token", False, auth).verified
    assert not decide("auth", True, ()).verified
    assert not decide("token_and_auth", True, ()).verified
    assert decide("token_and_auth", True, auth).proofs == ("token", *auth)


def test_a_missing_or_short_secret_stops_maild_before_anything_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[agents.keys]]\nid = 1\nsecret_env = "AGENT_KEY"\n')
    with pytest.raises(ConfigError, match=r"agents\.keys\.0\.secret_env.*AGENT_KEY is not set"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_settings(config, env={"AGENT_KEY": "short"})
    assert load_settings(config, env={"AGENT_KEY": KEY1.decode()}).agents.keys[0].id == 1
    with pytest.raises(ConfigError, match="at least 16 characters"):
        parse_settings({"agents": {"keys": [{"id": 1, "secret": "short"}]}}, "<test>")
