"""`maild imap check [NAME]`: can maild use this mailbox, and what would it take?

Connects and authenticates as the poller would, lists the folders, reports the
capabilities maild uses (IDLE, MOVE, UIDPLUS) and, per watched folder, how many mails
lie above the checkpoint. It changes nothing on the server: folders are EXAMINEd
(read-only), nothing is created, moved or flagged, and no checkpoint is written. (The
refresh-token flow may rotate the refresh token; the new one is stored, as it must be.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maild.clock import Clock
from maild.config import ImapSettings
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.receive.imap import (
    SERVER_ERRORS,
    classify,
    config_name,
    connect,
    describe,
    hierarchy_delimiter,
    load_checkpoint,
    password_for,
    server_name,
)
from maild.receive.imap_oauth import token_source

if TYPE_CHECKING:  # the client is used through receive/imap.py, which imports imapclient
    from imapclient import IMAPClient

CAPABILITIES = ("IDLE", "MOVE", "UIDPLUS")


@dataclass(frozen=True)
class FolderReport:
    folder: str
    exists: bool
    messages: int = 0
    # Mails above the checkpoint: what the next pass would take.
    unprocessed: int = 0
    uidvalidity: int | None = None
    # "none" (never polled), "current", or "uidvalidity changed" (a full rescan is due).
    checkpoint: str = "none"


@dataclass
class MailboxReport:
    name: str
    server: str
    ok: bool = False
    error_kind: str | None = None
    error: str | None = None
    capabilities: dict[str, bool] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)
    watched: list[FolderReport] = field(default_factory=list)
    # The folders maild would create on first use, if missing.
    missing: list[str] = field(default_factory=list)
    mode: str | None = None
    oauth_access_expires_at: datetime | None = None
    oauth_refresh_expires_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("oauth_access_expires_at", "oauth_refresh_expires_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


def check(
    settings: ImapSettings, db: Database, clock: Clock, env: dict[str, str] | None = None
) -> MailboxReport:
    """Inspect one mailbox without changing it. Server and token errors end up in the report;
    a configuration error (an unset environment variable) raises ConfigError."""
    report = MailboxReport(settings.name, f"{settings.host}:{settings.effective_port}")
    password = password_for(settings, env) if settings.auth == "password" else ""
    token = token_source(settings, db, clock, env) if settings.auth == "xoauth2" else None
    try:
        client, access = connect(settings, password, token)
        try:
            if access is not None:
                report.oauth_access_expires_at = access.expires_at
                report.oauth_refresh_expires_at = access.refresh_expires_at
            _inspect(client, settings, db, report)
        finally:
            client.logout()
    except (*SERVER_ERRORS, TemporaryFailure) as exc:
        report.error_kind = classify(exc)
        report.error = describe(exc)
        return report
    absent = [f.folder for f in report.watched if not f.exists]
    if absent:
        report.error_kind = "folder"
        report.error = f"watched folder missing on the server: {', '.join(absent)}"
        return report
    report.ok = True
    return report


def select(mailboxes: list[ImapSettings], name: str | None) -> list[ImapSettings]:
    """The mailboxes to check: all, or the one named. Raises LookupError naming the known."""
    if name is None:
        return list(mailboxes)
    chosen = [m for m in mailboxes if m.name == name]
    if not chosen:
        known = ", ".join(m.name for m in mailboxes) or "none configured"
        raise LookupError(f"no [[imap]] mailbox named {name!r} (known: {known})")
    return chosen


def _inspect(
    client: IMAPClient, settings: ImapSettings, db: Database, report: MailboxReport
) -> None:
    report.capabilities = {name: bool(client.has_capability(name)) for name in CAPABILITIES}
    delimiter = hierarchy_delimiter(client)
    names = [_text(name) for _flags, _delim, name in client.list_folders()]
    report.folders = sorted(config_name(name, delimiter) for name in names)
    idle = settings.idle and len(settings.folders) == 1 and report.capabilities["IDLE"]
    report.mode = "idle" if idle else f"poll every {settings.poll_interval:g} s"
    for folder in settings.folders:
        report.watched.append(_folder(client, settings, db, folder, delimiter))
    targets = [settings.too_large_folder]
    if settings.after == "move":
        targets.insert(0, settings.move_to)
    report.missing = [f for f in targets if not client.folder_exists(server_name(f, delimiter))]


def _folder(
    client: IMAPClient, settings: ImapSettings, db: Database, folder: str, delimiter: str
) -> FolderReport:
    name = server_name(folder, delimiter)
    if not client.folder_exists(name):
        return FolderReport(folder, exists=False)
    selected = client.select_folder(name, readonly=True)
    uidvalidity = int(selected[b"UIDVALIDITY"])
    stored = load_checkpoint(db, settings.name, folder)
    last_uid = 0
    state = "none"
    if stored is not None:
        state = "current" if stored.uidvalidity == uidvalidity else "uidvalidity changed"
        last_uid = stored.last_uid if state == "current" else 0
    # As in the poller: "UID n:*" always matches the newest message, even below n.
    above = [uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid]
    client.close_folder()
    return FolderReport(
        folder,
        exists=True,
        messages=int(selected.get(b"EXISTS", 0)),
        unprocessed=len(above),
        uidvalidity=uidvalidity,
        checkpoint=state,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def render(report: MailboxReport) -> str:
    """The report as an operator reads it."""
    lines = [f"{report.name}  {report.server}"]
    if not report.capabilities:  # it never got past the login
        lines.append(f"  FAILED ({report.error_kind}): {report.error}")
        return "\n".join(lines)
    caps = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report.capabilities.items())
    lines.append("  login         ok")
    lines.append(f"  capabilities  {caps}")
    lines.append(f"  waits by      {report.mode}")
    lines.append(f"  folders       {', '.join(report.folders)}")
    for f in report.watched:
        if not f.exists:
            lines.append(f"  watch {f.folder}: MISSING on the server")
            continue
        lines.append(
            f"  watch {f.folder}: {f.messages} messages, {f.unprocessed} unprocessed"
            f" (UIDVALIDITY {f.uidvalidity}, checkpoint {f.checkpoint})"
        )
    for folder in report.missing:
        lines.append(f"  {folder}: does not exist yet; created on first use")
    if report.oauth_access_expires_at is not None:
        lines.append(f"  access token  expires {report.oauth_access_expires_at.isoformat()}")
    if report.oauth_refresh_expires_at is not None:
        lines.append(f"  refresh token expires {report.oauth_refresh_expires_at.isoformat()}")
    if not report.ok:
        lines.append(f"  FAILED ({report.error_kind}): {report.error}")
    return "\n".join(lines)
