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
from urllib.parse import urlsplit

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
    # PostgreSQL: give up on a connection attempt after this many seconds (the mail is
    # then refused with 451 and retried by its sender).
    connect_timeout: int = Field(default=10, ge=1)


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
    # Past any of these a mail is quarantined (step parse), whichever way it came in.
    # Far above real mail (the dev corpus peaks at 57 fields, 7 KB of headers, depth 5,
    # 13 parts, a 28 KB line); they stop mail built to make the pipeline slow.
    max_header_fields: int = Field(default=1000, gt=0)
    max_header_bytes: int = Field(default=1024 * 1024, gt=0)
    max_mime_depth: int = Field(default=32, gt=0)
    max_mime_parts: int = Field(default=1000, gt=0)
    max_attachments: int = Field(default=250, gt=0)
    # Decoded bytes of all attachments together.
    max_attachment_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    # Bytes per line, its line end included (RFC 5321 allows 1000; mailers exceed it).
    max_line_length: int = Field(default=1024 * 1024, gt=0)
    # Wall-clock seconds one mail may spend being parsed before it is quarantined with
    # reason "timeout" (0: no bound). Real mail at max_message_size parses in a few
    # seconds; this stops input built to make the parser crawl.
    max_parse_seconds: float = Field(default=30.0, ge=0)

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
    # Flood throttle, checked at MAIL FROM: transactions one envelope sender may start per
    # throttle_window seconds (a token bucket: that many at once, then refilled evenly);
    # past it `451 4.7.1`, and the sender's MTA retries later. 0 turns it off.
    max_mails_per_sender: int = Field(default=120, ge=0)
    # The same per client IP address. Off by default: behind a relay all mail comes from
    # one address.
    max_mails_per_client: int = Field(default=0, ge=0)
    throttle_window: float = Field(default=60.0, gt=0)


class DaemonSettings(_Section):
    # Processing runs in this many worker processes (the spool decouples them from the
    # listeners, so a slow mail never stalls SMTP); 0 runs it in a thread of the daemon.
    workers: int = Field(default=1, ge=0, le=64)
    # How often to look for mail spooled by other processes (ingest, other instances).
    poll_interval: float = Field(default=2.0, gt=0)
    # Backpressure: with this many mails pending in the spool, SMTP answers RCPT with
    # `451 4.3.2` and IMAP stops fetching, until fewer than spool_low_mark (default: half
    # the high mark) are pending. 0 turns it off. The depth is re-read every
    # backpressure_interval seconds.
    spool_high_mark: int = Field(default=10_000, ge=0)
    spool_low_mark: int | None = Field(default=None, ge=0)
    backpressure_interval: float = Field(default=1.0, gt=0)

    @field_validator("spool_low_mark")
    @classmethod
    def _low_below_high(cls, value: int | None, info: ValidationInfo) -> int | None:
        high = info.data.get("spool_high_mark")
        if high and value is not None and value >= high:
            raise ValueError(f"must be below spool_high_mark ({high})")
        return value


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
    # "password": LOGIN with a password. "xoauth2": an OAuth2 access token, either printed
    # by token_command (run at every connect) or got by maild's own refresh-token flow.
    auth: Literal["password", "xoauth2"] = "password"
    # With auth = "password", exactly one of these: the password, or the variable holding it.
    password: SecretStr | None = None
    password_env: str | None = Field(default=None, validate_default=True)
    # With auth = "xoauth2": the command (argv list, no shell) that prints the access token.
    token_command: list[str] | None = Field(default=None, validate_default=True)
    # With auth = "xoauth2", or instead: the refresh-token flow. The provider's token
    # endpoint (https; http only to loopback), the app's client id, the variables holding
    # the client secret (confidential clients) and the first refresh token. A refresh
    # token the provider rotates is kept in the database and used from then on.
    client_id: str | None = None
    client_secret_env: str | None = None
    refresh_token_env: str | None = None
    scope: str | None = None
    # How long a refresh token lives when the provider does not say (Microsoft 365: 90 days
    # from its issue, renewed by each rotation). Drives the expiry metric and warning.
    refresh_token_lifetime_days: float = Field(default=90.0, gt=0)
    token_url: str | None = Field(default=None, validate_default=True)
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
                raise ValueError("auth = 'xoauth2' uses an OAuth2 token, not a password")
            return value
        if (info.data.get("password") is None) == (value is None):
            raise ValueError("set exactly one of 'password' and 'password_env'")
        return value

    @field_validator("token_command")
    @classmethod
    def _token_command_for_oauth(
        cls, value: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        if value is not None and not (value and value[0]):
            raise ValueError("must be a non-empty argv list")
        if info.data.get("auth") != "xoauth2" and value is not None:
            raise ValueError("token_command is only used with auth = 'xoauth2'")
        return value

    @field_validator("token_url")
    @classmethod
    def _one_token_source(cls, url: str | None, info: ValidationInfo) -> str | None:
        flow = ("client_id", "client_secret_env", "refresh_token_env", "scope")
        given = [key for key in flow if info.data.get(key) is not None]
        if info.data.get("auth") != "xoauth2":
            if given or url is not None:
                raise ValueError(
                    f"{given[0] if given else 'token_url'} is only used with auth = 'xoauth2'"
                )
            return url
        command = info.data.get("token_command") is not None
        if command == (url is not None):
            raise ValueError(
                "auth = 'xoauth2' needs token_command or token_url (the refresh-token flow),"
                " exactly one"
            )
        if command and given:
            raise ValueError(f"{given[0]} belongs to the refresh-token flow, not token_command")
        if url is not None:
            missing = [k for k in ("client_id", "refresh_token_env") if not info.data.get(k)]
            if missing:
                raise ValueError(f"token_url needs {' and '.join(missing)}")
            parsed = urlsplit(url)
            plain_ok = parsed.scheme == "http" and _is_loopback(parsed.hostname or "")
            if not (parsed.scheme == "https" or plain_ok) or not parsed.hostname:
                raise ValueError("token_url must be an https URL (http only to loopback)")
        return url

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
    # Automatic replies on one ticket within a day, at most (whoever they go to).
    max_per_ticket: int = Field(default=10, ge=0)
    # An address that bounced our mail gets no automatic mail for this long (seconds).
    bounce_suppress: float = Field(default=7 * 24 * 3600.0, ge=0)
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


# Signing secrets shorter than this are refused: a guessable key makes every token forgeable.
MIN_SECRET = 16


class SigningKey(_Section):
    """One HMAC key for agents' reply addresses and notification Message-IDs."""

    # Written into every token, so a rotated-out key still verifies until it is removed.
    id: int = Field(ge=0, le=9999)
    # Exactly one: the secret itself (keep config.toml private), or the variable holding it.
    secret: SecretStr | None = None
    secret_env: str | None = Field(default=None, validate_default=True)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET:
            raise ValueError(f"must be at least {MIN_SECRET} characters")
        return value

    @field_validator("secret_env")
    @classmethod
    def _one_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if (info.data.get("secret") is None) == (value is None):
            raise ValueError("set exactly one of 'secret' and 'secret_env'")
        return value


class AgentSettings(_Section):
    """Agents working by mail (`[agents]`): notifications, relayed replies, commands."""

    # Signing keys; new tokens use `signing_key` (default: the highest id). Without keys
    # agents are recognised by Authentication-Results only.
    keys: list[SigningKey] = Field(default_factory=list)
    signing_key: int | None = None
    # Hex digits of HMAC in a reply address (64 bits by default).
    token_length: int = Field(default=16, ge=8, le=40)
    # What proves an agent's mail is the agent's: a signed reply address ("token"), an
    # Authentication-Results header from a trusted relay ("auth"), either, or both.
    identity: Literal["token_or_auth", "token", "auth", "token_and_auth"] = "token_or_auth"
    # authserv-ids whose Authentication-Results headers are believed. The relay must
    # remove such headers arriving from outside (RFC 8601 section 5).
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # Mail from an agent to this address is an internal note (never sent to a customer).
    internal_address: str | None = None
    # Display name on relayed replies; "{agent}" is the agent's name, "" shows none.
    from_name: str = "{agent}"
    # Keep the agent's signature in the relayed text (quoted history is always removed).
    keep_signature: bool = True
    # Notify agents of new tickets and customer follow-ups.
    notify: bool = True
    # Attachments go along with notifications and relayed replies up to this many bytes
    # in total; the rest are named in the text.
    attachment_limit: int = Field(default=10 * 1024 * 1024, ge=0)
    # A customer writing to a ticket resolved at most this many days ago reopens it;
    # later (or to a closed ticket) the mail opens a new ticket linked to the old one.
    reopen_days: int = Field(default=14, ge=0)

    @field_validator("internal_address")
    @classmethod
    def _internal_lower(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if "@" not in value:
            raise ValueError("must be an e-mail address")
        return value

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _ids_lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]

    @field_validator("signing_key")
    @classmethod
    def _signing_key_exists(cls, value: int | None, info: ValidationInfo) -> int | None:
        ids = [k.id for k in info.data.get("keys", [])]
        if value is not None and value not in ids:
            raise ValueError(f"no key with id {value} in [[agents.keys]]")
        if len(set(ids)) != len(ids):
            raise ValueError("two [[agents.keys]] share an id")
        return value


class SlaSettings(_Section):
    """The SLA sweep (`[sla]`); the policies live in the rules directory (`sla.yaml`)."""

    # The daemon sweeps this often (seconds): a stage fires at most this late.
    interval: float = Field(default=30.0, gt=0)
    # Due tickets taken per transaction.
    batch_size: int = Field(default=500, ge=1, le=10_000)


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
    agents: AgentSettings = AgentSettings()
    sla: SlaSettings = SlaSettings()
    source: str = Field(default="<defaults>", exclude=True)

    def is_support_address(self, address: str) -> bool:
        address = address.lower()
        if address in self.mail.support_addresses:
            return True
        # agents (issue 7): signed reply addresses are sub-addresses of a support address.
        local, _, domain = address.rpartition("@")
        base = f"{local.partition('+')[0]}@{domain}"
        if base in self.mail.support_addresses or address == self.agents.internal_address:
            return True
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
    settings = parse_settings(data, source)
    # agents (issue 7): a signing secret named by variable must be there before anything runs.
    for index, key in enumerate(settings.agents.keys):
        if key.secret_env is not None and len(env.get(key.secret_env, "")) < MIN_SECRET:
            raise ConfigError(
                f"{source}: key 'agents.keys.{index}.secret_env': environment variable "
                f"{key.secret_env} is not set or shorter than {MIN_SECRET} characters"
            )
    return settings
