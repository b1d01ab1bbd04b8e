"""Typed settings from config.toml.

Lookup order: --config, $MAILD_CONFIG, ./config.toml, built-in defaults.
$MAILD_DATABASE_URL overrides [database] url. Every error names the file, the key and
what was expected, before anything runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from maild.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///maild.db"
    # SQLite waits this long for a competing writer before giving up (ms).
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)


class TicketSettings(_Section):
    # Python format string; {seq} is the ticket's sequence number, {date} its creation time.
    number_format: str = "{seq}"
    number_offset: int = Field(default=0, ge=0)
    # {number} is replaced by the ticket number; the rest is matched literally in subjects.
    tag_format: str = "[#{number}]"

    @field_validator("tag_format")
    @classmethod
    def _tag_has_number(cls, value: str) -> str:
        if value.count("{number}") != 1:
            raise ValueError("must contain {number} exactly once")
        return value

    @field_validator("number_format")
    @classmethod
    def _number_format_renders(cls, value: str) -> str:
        from datetime import UTC, datetime

        try:
            rendered = value.format(seq=1, date=datetime(2026, 1, 1, tzinfo=UTC))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may only use {{seq}} and {{date}}: {exc}") from exc
        if not re.fullmatch(r"[A-Za-z0-9-]+", rendered):
            raise ValueError("must render to letters, digits and '-' only")
        return value


class MailSettings(_Section):
    # Our own addresses: never counted as ticket participants, and (with the listener)
    # the only recipients accepted.
    support_addresses: list[str] = Field(default_factory=lambda: ["support@example.com"])
    support_domains: list[str] = Field(default_factory=list)
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)

    @field_validator("support_addresses", "support_domains")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]


class LoggingSettings(_Section):
    format: Literal["keyvalue", "json"] = "keyvalue"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ListenerSettings(_Section):
    """One SMTP or LMTP listener, on host:port or on a Unix socket."""

    protocol: Literal["smtp", "lmtp"] = "smtp"
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    socket: Path | None = None


class SmtpSettings(_Section):
    """What every listener shares."""

    # Our name in the greeting and in the Received: header we add.
    hostname: str = "localhost"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_starttls: bool = False
    max_connections: int = Field(default=200, gt=0)
    # Per command verb and connection: stops a client from looping RCPT or NOOP forever.
    max_commands: int = Field(default=1000, gt=0)
    idle_timeout: float = Field(default=300.0, gt=0)
    # On SIGTERM, how long an SMTP transaction in flight may take to finish.
    shutdown_grace: float = Field(default=30.0, ge=0)


class DaemonSettings(_Section):
    # Processing runs in this many worker processes (the spool decouples them from the
    # listeners, so a slow mail never stalls SMTP); 0 runs it in a thread of the daemon.
    workers: int = Field(default=1, ge=0, le=64)
    # How often to look for mail spooled by other processes (ingest, other instances).
    poll_interval: float = Field(default=2.0, gt=0)


class HttpSettings(_Section):
    """Health and Prometheus metrics. Keep it on loopback: it has no authentication."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9325, ge=0, le=65535)


class PathSettings(_Section):
    rules: Path = Path("rules")
    templates: Path = Path("templates")


class ImapSettings(_Section):
    """One IMAP mailbox that maild empties into the spool (`[[imap]]`)."""

    # Names the mailbox in logs, /healthz, metrics and the checkpoint and lease rows.
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    host: str = Field(min_length=1)
    # Default: 993 for implicit TLS, 143 otherwise.
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    # Plaintext IMAP is refused unless this is true AND the host is a loopback address.
    allow_plaintext: bool = Field(default=False, validate_default=True)
    # A PEM bundle of CAs to trust instead of the system's (a private CA).
    ca_file: Path | None = None
    username: str = Field(min_length=1)
    # "password": LOGIN with a password. "xoauth2": an OAuth2 access token printed by
    # token_command (run at every connect; e.g. a helper that refreshes and caches it).
    auth: Literal["password", "xoauth2"] = "password"
    # With auth = "password", exactly one of these: the password, or the variable holding it.
    password: SecretStr | None = None
    password_env: str | None = Field(default=None, validate_default=True)
    # With auth = "xoauth2": the command (argv list, no shell) that prints the access token.
    token_command: list[str] | None = Field(default=None, validate_default=True)
    # The support address this mailbox stands for: the envelope recipient of its mail.
    address: str = Field(min_length=3)
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    # After a mail is safely spooled: move it, flag it \Seen, or delete it.
    after: Literal["move", "flag", "delete"] = "move"
    # Folder names use "/" as separator; it is translated to the server's own.
    move_to: str = Field(default="maild/processed", validate_default=True)
    too_large_folder: str = "maild/too-large"
    # Use IDLE when the server offers it (and one folder is watched); else poll.
    idle: bool = True
    # IDLE is re-issued this often; RFC 2177 servers may drop it after 30 minutes.
    idle_renew: float = Field(default=25 * 60, gt=0, le=29 * 60)
    poll_interval: float = Field(default=60.0, gt=0)
    # Mails fetched per FETCH command.
    batch_size: int = Field(default=50, ge=1, le=1000)
    # Socket timeout for connecting and for each command (seconds).
    timeout: float = Field(default=60.0, gt=0)
    # Reconnect waits grow from 1 s up to this after repeated errors.
    max_backoff: float = Field(default=300.0, ge=1)
    # How long a poller's claim on the mailbox lasts without renewal (several instances).
    lease_seconds: float = Field(default=60.0, ge=3)

    @field_validator("address")
    @classmethod
    def _address_lower(cls, value: str) -> str:
        value = value.strip().lower()
        if "@" not in value:
            raise ValueError("must be an e-mail address")
        return value

    @field_validator("move_to", "too_large_folder")
    @classmethod
    def _folder_name(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip("/")
        if not value or value.upper() == "INBOX":
            raise ValueError("must name a folder other than INBOX")
        if info.field_name == "move_to" and value in info.data.get("folders", ()):
            raise ValueError("must not be one of the watched folders")
        return value

    # The cross-field checks sit on single fields (declared after the fields they read):
    # an error then quotes that field's value only, never the whole table and its password.
    @field_validator("allow_plaintext")
    @classmethod
    def _plaintext_only_to_loopback(cls, value: bool, info: ValidationInfo) -> bool:
        if info.data.get("tls") != "none":
            return value
        if not value:
            raise ValueError("tls = 'none' needs allow_plaintext = true")
        if not _is_loopback(str(info.data.get("host", ""))):
            raise ValueError("tls = 'none' is only allowed to a loopback host")
        return value

    @field_validator("password_env")
    @classmethod
    def _one_password(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("auth") == "xoauth2":
            if info.data.get("password") is not None or value is not None:
                raise ValueError("auth = 'xoauth2' uses token_command, not a password")
            return value
        if (info.data.get("password") is None) == (value is None):
            raise ValueError("set exactly one of 'password' and 'password_env'")
        return value

    @field_validator("token_command")
    @classmethod
    def _token_command_for_oauth(
        cls, value: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        oauth = info.data.get("auth") == "xoauth2"
        if oauth and not (value and value[0]):
            raise ValueError("auth = 'xoauth2' needs token_command (a non-empty argv list)")
        if not oauth and value is not None:
            raise ValueError("token_command is only used with auth = 'xoauth2'")
        return value

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.tls == "implicit" else 143


class OutboundSettings(_Section):
    """Outbound mail: the SMTP relay, the acknowledgement, loop protection (`[outbound]`)."""

    # Acknowledgements are queued only when this is true (the sender runs regardless, so
    # queued mail still leaves). Off until the operator has pointed host/port at a relay.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    # "starttls" upgrades a plain connection; "implicit" is SMTPS (usually port 465).
    tls: Literal["none", "starttls", "implicit"] = "none"
    # A PEM bundle of CAs to trust instead of the system's (a private relay).
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0)
    # The domain of our Message-IDs; default: the domain of the sending support address.
    message_id_domain: str | None = None
    # Written into X-Maild-Loop: a mail carrying it back to us is never answered.
    instance_id: str = Field(default="maild", min_length=1, pattern=r"^[A-Za-z0-9._@-]+$")
    # Template language when the mail and the rules do not choose one.
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}$")
    # Senders never answered automatically (regexes on the local part, case-insensitive).
    no_reply_patterns: list[str] = Field(
        default_factory=lambda: [
            r"^(mailer-daemon|postmaster|listserv|majordomo|bounces?)$",
            r"^no[-_.]?reply",
            r"^do[-_.]?not[-_.]?reply",
            r"^(owner|bounces?)-",
            r"-(request|bounces?|owner)$",
        ]
    )
    # Automatic mails to one recipient, at most.
    max_per_hour: int = Field(default=5, ge=0)
    max_per_day: int = Field(default=20, ge=0)
    # Due rows taken per sender pass, and how often the daemon runs a pass (seconds).
    batch_size: int = Field(default=20, ge=1, le=1000)
    interval: float = Field(default=5.0, gt=0)
    # A claimed row is taken again after this long if its sender died mid-send.
    claim_seconds: float = Field(default=300.0, gt=0)
    # Temporary failures: retry after retry_base * 2^(attempt-1), at most retry_max apart,
    # until the row is max_age old; then it fails.
    retry_base: float = Field(default=60.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    max_age: float = Field(default=5 * 24 * 3600.0, gt=0)

    @field_validator("no_reply_patterns")
    @classmethod
    def _patterns_compile(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {value!r}: {exc}") from exc
        return values


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unique_imap_names(mailboxes: list[ImapSettings]) -> list[ImapSettings]:
    names = [m.name for m in mailboxes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate [[imap]] name: {', '.join(duplicates)}")
    return mailboxes


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    tickets: TicketSettings = TicketSettings()
    mail: MailSettings = MailSettings()
    logging: LoggingSettings = LoggingSettings()
    paths: PathSettings = PathSettings()
    listener: list[ListenerSettings] = Field(default_factory=lambda: [ListenerSettings()])
    smtp: SmtpSettings = SmtpSettings()
    daemon: DaemonSettings = DaemonSettings()
    http: HttpSettings = HttpSettings()
    imap: Annotated[list[ImapSettings], AfterValidator(_unique_imap_names)] = Field(
        default_factory=list
    )
    outbound: OutboundSettings = OutboundSettings()
    source: str = Field(default="<defaults>", exclude=True)

    def is_support_address(self, address: str) -> bool:
        address = address.lower()
        if address in self.mail.support_addresses:
            return True
        domain = address.rpartition("@")[2]
        return bool(domain) and domain in self.mail.support_domains


def _describe(error: dict[str, object]) -> str:
    loc = error.get("loc", ())
    key = ".".join(str(part) for part in loc) if isinstance(loc, tuple) else str(loc)
    kind = str(error.get("type", ""))
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {error.get('msg')} (got {error.get('input')!r})"


def parse_settings(data: dict[str, object], source: str) -> Settings:
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    chosen: Path | None = None
    if path is not None:
        chosen = Path(path)
    elif env.get("MAILD_CONFIG"):
        chosen = Path(env["MAILD_CONFIG"])
    elif Path("config.toml").is_file():
        chosen = Path("config.toml")

    data: dict[str, object] = {}
    source = "<defaults>"
    if chosen is not None:
        source = str(chosen)
        try:
            with chosen.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None

    url = env.get("MAILD_DATABASE_URL")
    if url:
        section = data.setdefault("database", {})
        # A non-table [database] is left alone so validation reports it by name.
        if isinstance(section, dict):
            data["database"] = {**section, "url": url}
    return parse_settings(data, source)
