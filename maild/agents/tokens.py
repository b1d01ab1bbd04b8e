"""Signed reply addresses and Message-IDs for agents. Pure; no I/O.

A notification to agent A about ticket T carries Reply-To
`support+t<T>.a<A>.k<key>.<hmac>@domain`, where <A> is a short digest of A's address and
the HMAC (with the key named by <key>) covers the ticket, the key id and A's full
address. Only someone holding the server secret can make one; a reply to it from A's
address proves the mail answers a notification A received. Keys rotate by id: a token
names its key, so old tokens verify as long as their key stays configured.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from maild.config import MIN_SECRET, AgentSettings
from maild.errors import ConfigError

_TOKEN = re.compile(r"t(?P<ticket>[a-z0-9-]+)\.a(?P<agent>[0-9a-f]{8})\.k(?P<key>\d{1,4})\.")
_ADDRESS_TOKEN = re.compile(_TOKEN.pattern + r"(?P<mac>[0-9a-f]{8,40})")
_MESSAGE_ID_TOKEN = re.compile(_TOKEN.pattern + r"(?P<nonce>[0-9a-f]{16})\.(?P<mac>[0-9a-f]{32})")


def agent_tag(address: str) -> str:
    """A stable short name for an agent in tokens (not secret: the HMAC is the proof)."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Token:
    """What a reply address or Message-ID claims; `Keyring.verify` checks it for an agent."""

    ticket: str  # the ticket number, lower-cased
    agent: str  # agent_tag of the agent's address
    key_id: int
    mac: str
    nonce: str = ""


class Keyring:
    """The configured signing keys. Without keys it signs nothing and verifies nothing."""

    def __init__(self, keys: Mapping[int, bytes], current: int | None, length: int = 16) -> None:
        self._keys = dict(keys)
        self.current = current if current is not None else max(self._keys, default=None)
        self._length = length

    @classmethod
    def from_settings(
        cls, settings: AgentSettings, env: Mapping[str, str] | None = None
    ) -> Keyring:
        env = os.environ if env is None else env
        keys: dict[int, bytes] = {}
        for key in settings.keys:
            if key.secret is not None:
                value = key.secret.get_secret_value()
            else:
                value = env.get(key.secret_env or "", "")
                if not value:
                    raise ConfigError(
                        f"[[agents.keys]] id {key.id}: environment variable "
                        f"{key.secret_env} is not set"
                    )
            if len(value) < MIN_SECRET:
                raise ConfigError(
                    f"[[agents.keys]] id {key.id}: secret shorter than {MIN_SECRET} characters"
                )
            keys[key.id] = value.encode()
        return cls(keys, settings.signing_key, settings.token_length)

    @property
    def can_sign(self) -> bool:
        return self.current is not None

    def _mac(self, key_id: int, ticket: str, agent_address: str, nonce: str = "") -> str:
        payload = f"t{ticket.lower()}|a{agent_address.strip().lower()}|k{key_id}|n{nonce}"
        return hmac.new(self._keys[key_id], payload.encode(), hashlib.sha256).hexdigest()

    def reply_address(self, support_address: str, ticket: str, agent_address: str) -> str:
        """`support+t<ticket>.a<agent>.k<key>.<hmac>@domain`; the plain address without keys."""
        if self.current is None:
            return support_address
        local, _, domain = support_address.partition("@")
        mac = self._mac(self.current, ticket, agent_address)[: self._length]
        head = f"t{ticket.lower()}.a{agent_tag(agent_address)}.k{self.current}."
        return f"{local}+{head}{mac}@{domain}"

    def message_id(self, domain: str, ticket: str, agent_address: str) -> str:
        """A fresh Message-ID that names the ticket and agent, signed (random otherwise)."""
        nonce = secrets.token_hex(8)
        if self.current is None:
            return f"<{nonce}{secrets.token_hex(8)}@{domain}>"
        mac = self._mac(self.current, ticket, agent_address, nonce)[:32]
        head = f"t{ticket.lower()}.a{agent_tag(agent_address)}.k{self.current}."
        return f"<{head}{nonce}.{mac}@{domain}>"

    def verify(self, token: Token, agent_address: str) -> bool:
        """Whether `token` was made by us for this agent (the ticket is the token's)."""
        if token.key_id not in self._keys or token.agent != agent_tag(agent_address):
            return False
        expected = self._mac(token.key_id, token.ticket, agent_address, token.nonce)
        if token.nonce:
            expected = expected[:32]
        elif len(token.mac) < self._length:
            return False  # a shortened MAC would be easier to guess than the configured one
        return hmac.compare_digest(expected[: len(token.mac)], token.mac)


def read_reply_address(address: str) -> Token | None:
    """The token in a `local+token@domain` address, unverified; None if it has none."""
    local = address.strip().lower().rpartition("@")[0]
    _, plus, tail = local.partition("+")
    found = _ADDRESS_TOKEN.fullmatch(tail) if plus else None
    if found is None:
        return None
    return Token(found["ticket"], found["agent"], int(found["key"]), found["mac"])


def read_message_id(message_id: str) -> Token | None:
    """The token in one of our notification Message-IDs, unverified; None if none."""
    local = message_id.strip().strip("<>").lower().rpartition("@")[0]
    found = _MESSAGE_ID_TOKEN.fullmatch(local)
    if found is None:
        return None
    return Token(
        found["ticket"], found["agent"], int(found["key"]), found["mac"], nonce=found["nonce"]
    )
