"""OAuth2 access tokens for XOAUTH2: from the operator's command, or by the refresh-token flow.

The refresh-token flow (RFC 6749 section 6) posts the mailbox's refresh token to the
provider's token endpoint and gets an access token with its lifetime, and often a new
refresh token (Microsoft 365 rotates them). The newest refresh token is kept in the
database, so a restart continues the chain instead of replaying a spent token; the one
in the environment only starts it, and wins again when the operator replaces it.

Expiry is known in advance: the access token's from `expires_in` (the poller reconnects
before it runs out), the refresh token's from `refresh_token_expires_in` when the
provider sends it, else from the configured lifetime counted from the last rotation.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from maild.clock import Clock
from maild.config import ImapSettings
from maild.db.models import ImapOAuthToken
from maild.db.session import Database
from maild.errors import ConfigError

# An access token with less than this left is refreshed before use, so it cannot lapse
# between the check and the AUTHENTICATE.
REFRESH_MARGIN = timedelta(minutes=5)


class TokenError(Exception):
    """No access token: the command failed, or the token endpoint refused or was unreachable."""


class TokenCommandError(TokenError):
    """The OAuth2 token command failed, timed out, or printed nothing."""


@dataclass(frozen=True)
class AccessToken:
    token: str
    # None when the source does not say (a token command).
    expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None


class TokenSource(Protocol):
    def access_token(self) -> AccessToken: ...


class CommandToken:
    """Runs `token_command` at every connect and uses what it prints."""

    def __init__(self, command: Sequence[str], timeout: float) -> None:
        self._command = list(command)
        self._timeout = timeout

    def access_token(self) -> AccessToken:
        return AccessToken(fetch_token(self._command, self._timeout))


def fetch_token(command: Sequence[str], timeout: float) -> str:
    """Run `token_command` and return the access token it prints. Raises TokenCommandError."""
    try:
        result = subprocess.run(
            list(command),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TokenCommandError(f"token command could not run: {exc}") from exc
    if result.returncode != 0:
        why = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TokenCommandError(
            f"token command exited {result.returncode}: {why[0] if why else 'no message'}"
        )
    token = result.stdout.decode("utf-8", "replace").strip()
    if not token:
        raise TokenCommandError("token command printed no token")
    return token


class RefreshFlow:
    """Access tokens for one mailbox by the refresh-token flow; thread-safe, cached."""

    def __init__(
        self,
        settings: ImapSettings,
        db: Database,
        clock: Clock,
        *,
        refresh_token: str,
        client_secret: str | None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._clock = clock
        self._seed = refresh_token
        self._seed_sha256 = hashlib.sha256(refresh_token.encode()).hexdigest()
        self._client_secret = client_secret
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None

    def access_token(self) -> AccessToken:
        """A token valid for at least REFRESH_MARGIN, refreshed if needed. Raises TokenError."""
        with self._lock:
            cached = self._cached
            if (
                cached
                and cached.expires_at
                and cached.expires_at - self._clock.now() > REFRESH_MARGIN
            ):
                return cached
            self._cached = self._refresh()
            return self._cached

    def _refresh(self) -> AccessToken:
        name = self._settings.name
        if self._db.is_postgres:
            # The row stays locked for the request: two instances must not both spend the
            # same refresh token, which a rotating provider would then revoke.
            with self._db.transaction() as session:
                row = session.get(ImapOAuthToken, name, with_for_update=True)
                token, stored = self._exchange(_Stored.of(row))
                _save(session, name, stored, self._clock.now())
                return token
        # SQLite serves a single instance, and its write lock held over an HTTP request
        # would stall every other writer (the spool) for as long as the request takes.
        with self._db.transaction() as session:
            before = _Stored.of(session.get(ImapOAuthToken, name))
        token, stored = self._exchange(before)
        with self._db.transaction() as session:
            _save(session, name, stored, self._clock.now())
        return token

    def _exchange(self, stored: _Stored | None) -> tuple[AccessToken, _Stored]:
        """Spend the current refresh token at the endpoint. Raises TokenError."""
        s = self._settings
        chain = stored if stored is not None and stored.seed_sha256 == self._seed_sha256 else None
        current = chain.refresh_token if chain is not None else self._seed
        answer = _post(s.token_url or "", self._form(current), s.timeout)
        now = self._clock.now()
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError("token endpoint answered without an access_token")
        rotated = answer.get("refresh_token")
        refresh = rotated if isinstance(rotated, str) and rotated else current
        refresh_in = _seconds(answer.get("refresh_token_expires_in"))
        if refresh_in is not None:
            refresh_expires = now + timedelta(seconds=refresh_in)
        elif chain is None or refresh != current:
            # A token first seen, or just issued: its lifetime starts now.
            refresh_expires = now + timedelta(days=s.refresh_token_lifetime_days)
        else:
            refresh_expires = chain.expires_at
        expires_in = _seconds(answer.get("expires_in"))
        access = AccessToken(
            token,
            None if expires_in is None else now + timedelta(seconds=expires_in),
            refresh_expires,
        )
        return access, _Stored(refresh, self._seed_sha256, refresh_expires)

    def _form(self, refresh_token: str) -> dict[str, str]:
        s = self._settings
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": s.client_id or "",
        }
        if self._client_secret is not None:
            form["client_secret"] = self._client_secret
        if s.scope:
            form["scope"] = s.scope
        return form


@dataclass(frozen=True)
class _Stored:
    refresh_token: str
    seed_sha256: str
    expires_at: datetime

    @staticmethod
    def of(row: ImapOAuthToken | None) -> _Stored | None:
        return None if row is None else _Stored(row.refresh_token, row.seed_sha256, row.expires_at)


def _save(session: Session, mailbox: str, stored: _Stored, now: datetime) -> None:
    row = session.get(ImapOAuthToken, mailbox)
    if row is None:
        row = ImapOAuthToken(mailbox=mailbox)
        session.add(row)
    row.refresh_token = stored.refresh_token
    row.seed_sha256 = stored.seed_sha256
    row.expires_at = stored.expires_at
    row.updated_at = now


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def _post(url: str, form: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST the form to the token endpoint; the JSON answer, or TokenError."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise TokenError(
            f"token endpoint refused ({exc.code}): {_oauth_error(exc.read())}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise TokenError(f"token endpoint unreachable: {exc}") from exc
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise TokenError("token endpoint answered with something other than JSON") from exc
    if not isinstance(answer, dict):
        raise TokenError("token endpoint answered with something other than a JSON object")
    return answer


def _oauth_error(body: bytes) -> str:
    """RFC 6749 5.2 `error` and `error_description`, never the request (it holds secrets)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return "no OAuth2 error in the answer"
    if not isinstance(answer, dict):
        return "no OAuth2 error in the answer"
    parts = [str(answer[key]) for key in ("error", "error_description") if answer.get(key)]
    # Microsoft's descriptions run to several lines of trace ids; the first one says it.
    return ": ".join(parts).splitlines()[0] if parts else "no OAuth2 error in the answer"


def token_source(
    settings: ImapSettings,
    db: Database,
    clock: Clock,
    env: dict[str, str] | None = None,
) -> TokenSource:
    """The token source an `auth = "xoauth2"` mailbox is configured for. Raises ConfigError."""
    if settings.token_command:
        return CommandToken(settings.token_command, settings.timeout)
    env = dict(os.environ) if env is None else env
    refresh = _from_env(settings, "refresh_token_env", env)
    secret = _from_env(settings, "client_secret_env", env) if settings.client_secret_env else None
    return RefreshFlow(settings, db, clock, refresh_token=refresh, client_secret=secret)


def _from_env(settings: ImapSettings, key: str, env: dict[str, str]) -> str:
    name = getattr(settings, key) or ""
    if not env.get(name):
        raise ConfigError(f"[[imap]] '{settings.name}': {key} names {name!r}, which is not set")
    return env[name]
