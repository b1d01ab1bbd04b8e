"""Is an agent's mail really the agent's? Pure; no I/O.

A From address proves nothing. Two proofs count, combined as configured:
- token: the mail is addressed to a signed reply address made for this agent and ticket;
- auth: an Authentication-Results header (RFC 8601) from a trusted relay says dkim=pass
  for the agent's domain (aligned: the same domain or a parent of it), or spf=pass for
  an envelope sender in the agent's domain.
Only this module imports authres.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import authres

Policy = Literal["token_or_auth", "token", "auth", "token_and_auth"]


@dataclass(frozen=True, slots=True)
class Verdict:
    verified: bool
    # What proved it ("token", "dkim=pass header.d=example.com" ...), or why not.
    proofs: tuple[str, ...]
    reason: str


def _aligned(domain: str, agent_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: the same domain or a parent of it,
    never a bare top-level domain."""
    domain = domain.strip().strip(".").lower()
    if "." not in domain:
        return False
    return agent_domain == domain or agent_domain.endswith("." + domain)


def _domain_of(value: str) -> str:
    return value.strip().strip("<>").rpartition("@")[2].lower()


def authenticated(
    headers: Sequence[str], agent_address: str, trusted: Collection[str]
) -> tuple[str, ...]:
    """The passing results that a trusted relay reports for the agent's domain.

    Headers from other authserv-ids, and headers that do not parse, are ignored.
    """
    agent_domain = _domain_of(agent_address)
    proofs: list[str] = []
    for value in headers:
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(value)
        except authres.AuthResError:
            continue
        if str(parsed.authserv_id).lower() not in trusted:
            continue
        for result in parsed.results:
            if str(result.result).lower() != "pass":
                continue
            method = str(result.method).lower()
            found = {f"{p.type}.{p.name}".lower(): str(p.value) for p in result.properties}
            if method == "dkim":
                domain = found.get("header.d") or _domain_of(found.get("header.i", ""))
                if domain and _aligned(domain, agent_domain):
                    proofs.append(f"dkim=pass header.d={domain.lower()} ({parsed.authserv_id})")
            elif method == "spf":
                sender = found.get("smtp.mailfrom", "")
                if sender and _aligned(_domain_of(sender), agent_domain):
                    proofs.append(f"spf=pass smtp.mailfrom={sender.lower()} ({parsed.authserv_id})")
    return tuple(proofs)


def decide(policy: Policy, token: bool, auth: Sequence[str]) -> Verdict:
    """Combine the proofs as the policy says."""
    proofs = (("token",) if token else ()) + tuple(auth)
    has_auth = bool(auth)
    verified = {
        "token_or_auth": token or has_auth,
        "token": token,
        "auth": has_auth,
        "token_and_auth": token and has_auth,
    }[policy]
    if verified:
        return Verdict(True, proofs, "")
    missing = {
        "token_or_auth": "no signed reply address and no trusted authentication result",
        "token": "no valid signed reply address for this agent and ticket",
        "auth": "no passing authentication result from a trusted relay",
        "token_and_auth": "needs both a signed reply address and a trusted authentication",
    }[policy]
    return Verdict(False, proofs, missing)
