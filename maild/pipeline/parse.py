"""The parse step: raw mail bytes to a ParsedMail.

The only module of maild that imports mail-parser. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.feedparser
import hashlib
import re
import types
from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, Final

from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses

from maild.errors import Quarantine
from maild.outbox.dsn import is_delivery_report, read_report
from maild.pipeline.deadline import ParseTimeout, deadline, timeout_quarantine
from maild.pipeline.limits import DEFAULT_LIMITS, MailLimits
from maild.pipeline.text import (
    codec_name,
    decode_text,
    html_to_text,
    normalize_newlines,
    strip_reply,
)
from maild.types import Address, ParsedAttachment, ParsedMail

__all__ = ["decode_header_value", "parse"]

STEP: Final = "parse"

MAX_HEADER_FIELDS: Final = 1000
MAX_HEADER_VALUE: Final = 8 * 1024
# A message id longer than a header line may be is junk, not an id.
MAX_ID_LENGTH: Final = 998
# References of a very long thread: the root and the most recent ids matter.
MAX_REFERENCES: Final = 500
# Subject and address headers are read from at most this much (a To of 1,000 recipients
# is about 40 KB; mail-parser's address scanner takes ~20 us per address).
MAX_READ_VALUE: Final = 64 * 1024

_HASH_CHUNK: Final = 1 << 20

# Header names of which a mail has at least one. Text without any of them is not a mail
# (a body saved without headers, a random file).
_MAIL_HEADERS: Final = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "received",
        "return-path",
        "reply-to",
        "delivered-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "resent-from",
        "resent-to",
        "x-original-to",
        "envelope-to",
        "dkim-signature",
        "authentication-results",
        "list-id",
        "auto-submitted",
        "x-mailer",
        "user-agent",
    }
)
# Headers the parse step reads itself, from their full values (not the capped dict).
_WANTED: Final = frozenset(
    {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references"}
)
_ADDRESS_HEADERS: Final = ("from", "to", "cc", "reply-to")
_RAW_WANTED: Final = frozenset({*_ADDRESS_HEADERS, "date"})
_EXTENSIONS: Final = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "text/rfc822-headers": ".txt",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/pgp-signature": ".asc",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
}

_HEAD_END: Final = re.compile(rb"\n\r?\n")
_META_CHARSET: Final = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE
)
_ENCODED_WORD: Final = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?\s]*)\?=")
_MSG_ID: Final = re.compile(r"<([^<>]*)>")
_WHITESPACE: Final = re.compile(r"\s+")
_B64_JUNK: Final = re.compile(rb"[^A-Za-z0-9+/]")
# C0 and C1 controls, and the direction marks that make "gpj.exe" show as "exe.jpg".
_UNSAFE_FILENAME: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Names Windows opens as a device, whatever the extension, should an agent save the file.
_RESERVED_FILENAMES: Final = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)}
)
# One mailbox, ASCII, nothing ambiguous: 'Name <a@b.c>', '"Name" <a@b.c>', 'a@b.c'.
_SIMPLE_MAILBOX: Final = re.compile(
    r"""[ \t]*(?:"([^"\\\r\n]*)"|([A-Za-z0-9 .'_-]*?))[ \t]*"""
    r"""<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>[ \t]*"""
    r"""|[ \t]*([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)[ \t]*"""
)
_LOOSE_ADDRESS: Final = re.compile(r"[^\s<>(),;:\"'@\[\]]+@[^\s<>(),;:\"'@\[\]]+\.[A-Za-z]{2,}")


# A parse's result, or why there is none: kept as a value (parsing may happen in another
# process, ahead of time) and recorded by the transaction that claims the mail.
Parsed = ParsedMail | Exception


def parse_or_error(raw: bytes, limits: MailLimits = DEFAULT_LIMITS) -> Parsed:
    """`parse` within `[mail] max_parse_seconds`, a failure returned instead of raised."""
    try:
        with deadline(limits.max_parse_seconds):
            return parse(raw, limits)
    except ParseTimeout:
        return timeout_quarantine(limits.max_parse_seconds, limits.max_parse_seconds)
    except Exception as exc:  # the orchestrator's catch-all, deferred to the claim
        return exc


def parse(raw: bytes, limits: MailLimits = DEFAULT_LIMITS) -> ParsedMail:
    """Parse one raw mail.

    Raises Quarantine(step="parse") for input that is not a mail (empty, no headers),
    that cannot be taken apart (MIME nested too deep) or that is past one of `limits`.
    Everything else becomes a ParsedMail; what had to be repaired is listed in its
    `defects`.
    """
    if not raw.strip():
        raise Quarantine(STEP, "empty input")
    limits.check_raw(raw)
    defects: list[str] = []
    message = _message(raw)
    if not any(name.lower() in _MAIL_HEADERS for name in message):
        raise Quarantine(STEP, "no mail headers: not a mail")
    limits.check_message(message)

    body = _walk(message, defects)
    limits.check_attachments(body.attachments)
    charset = _header_charset(message, body.charset, defects)
    headers, wanted, raw_first = _read_headers(message, charset, defects)
    body_hash = _body_hash(raw, _split_head(raw)[1])

    subject = _WHITESPACE.sub(" ", _first(wanted, "subject")).strip()
    if len(subject) > MAX_HEADER_VALUE:
        subject = subject[:MAX_HEADER_VALUE]
        defects.append(f"subject: cut to {MAX_HEADER_VALUE} characters")
    from_, to, cc, reply_to = (
        _addresses(name, raw_first.get(name), charset, wanted, defects) for name in _ADDRESS_HEADERS
    )
    message_id, synthetic = _message_id(wanted, body_hash, defects)
    date = _date(raw_first.get("date"), charset, defects)
    in_reply_to = _ids(wanted.get("in-reply-to", ()), "in-reply-to", defects)
    references = _ids(wanted.get("references", ()), "references", defects)

    defects.extend(f"mime: {name}" for name in sorted(body.mime_defects))

    # classify.py's test for a delivery report, on the same header value.
    content_type = next(iter(headers.get("content-type", ())), None)
    text = _join(body.plain)
    html = "\n".join(body.html) if body.html else None
    if not text.strip() and html is not None:
        text, truncated = html_to_text(html)
        if truncated:
            defects.append("html: only the start was converted to text")
    if html is not None:
        html = _clean(html)
    text = _clean(text)

    return ParsedMail(
        message_id=message_id,
        synthetic_message_id=synthetic,
        body_hash=body_hash,
        in_reply_to=in_reply_to,
        references=references,
        from_=from_[0] if from_ else None,
        to=to,
        cc=cc,
        reply_to=reply_to,
        subject=_clean(subject),
        date=date,
        text=text,
        text_stripped=strip_reply(text) if text.strip() else text,
        html=html,
        attachments=tuple(body.attachments),
        headers=headers,
        defects=tuple(dict.fromkeys(defects)),
        # Read here, beside the parsing, rather than by the transaction that files it.
        bounce_report=read_report(raw) if is_delivery_report(content_type) else None,
    )


# --- mail-parser ------------------------------------------------------------------------

# mail-parser's MailParser runs the email package's parser and then, for every mail,
# parses all Received headers, decodes every header twice, re-encodes attachments as
# base64 and guesses bodies in ways this step has to redo anyway: about 80% of its time.
# This step runs the same email package parser once and takes from mail-parser what it
# does well: the address scanner and the date parser.
#
# What those helpers raise from their own bugs on odd input; the email package's own
# parsers are then used instead.
_PARSER_BUGS: Final = (
    email.errors.MessageError,  # HeaderParseError from a bad base64 word in a name
    AttributeError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    LookupError,
    UnicodeError,
)


def _message(raw: bytes) -> Message:
    """What email.message_from_bytes(raw) returns, from the parser below."""
    text = raw.decode("ascii", "surrogateescape")
    parser = _FeedParser(policy=compat32)
    try:
        # In the chunks email.parser.Parser feeds, so that nothing can differ.
        for start in range(0, len(text), _FEED_CHUNK):
            parser.feed(text[start : start + _FEED_CHUNK])
        message: Message = parser.close()
    except RecursionError as exc:
        # The email package recurses once per multipart level (what mail-parser
        # reports as MailParserRecursionError).
        raise Quarantine(STEP, "MIME nesting too deep") from exc
    return message


# --- the email package's parser ---------------------------------------------------------

# The email package's FeedParser spends about half of its time on two things its own
# code can do without (on mail with attachments):
# - after each MIME part, NLCRE_eol.search(payload) looks for the line end that belongs
#   to the next boundary: a regex scan of the whole payload (~0.3 ms for 300 KB of
#   base64) for a match that can only be in its last two characters;
# - every multipart's boundary gets a regex of its own, compiled once per mail (~0.2 ms;
#   boundaries are unique, so the re cache never hits), where a prefix test and one
#   shared regex for the rest of the line give the same match (what Python 3.13 does
#   itself, CPython gh-106628; there the boundary is never compiled and this part idles).
# So the parser runs the stdlib's own _parsegen code, with these two of its module
# globals replaced. What is replaced checks that it is what it expects (the pattern
# text); anything else is passed on, so a changed stdlib parser only loses the speed-up.
_FEED_CHUNK: Final = 8192
_BOUNDARY_HEAD: Final = "(?P<sep>"
_BOUNDARY_TAIL: Final = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_AFTER_BOUNDARY: Final = re.compile(_BOUNDARY_TAIL[1:])
_REGEX_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
_LINE_END_AT_END: Final = r"(\r\n|\r|\n)\Z"


class _BoundaryPattern:
    """The feedparser's boundary regex `(?P<sep>SEPARATOR)` + _BOUNDARY_TAIL, as a
    prefix test and a match of the shared tail. The match has the groups the parser
    reads ("end", "linesep"), not "sep"."""

    __slots__ = ("_separator",)

    def __init__(self, separator: str) -> None:
        self._separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self._separator):
            return None
        return _AFTER_BOUNDARY.match(line, len(self._separator))


class _FeedParserRegex:
    """The `re` module as the feedparser's _parsegen sees it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def compile(pattern: str, flags: int = 0) -> re.Pattern[str] | _BoundaryPattern:
        if not flags and pattern.startswith(_BOUNDARY_HEAD) and pattern.endswith(_BOUNDARY_TAIL):
            escaped = pattern[len(_BOUNDARY_HEAD) : -len(_BOUNDARY_TAIL)]
            separator = _REGEX_ESCAPE.sub(r"\1", escaped)
            if re.escape(separator) == escaped:
                return _BoundaryPattern(separator)
        return re.compile(pattern, flags)


class _LineEndAtEnd:
    """The feedparser's NLCRE_eol, searched only where it can match."""

    __slots__ = ("_pattern",)

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern

    def search(self, text: str) -> re.Match[str] | None:
        return self._pattern.search(text, max(len(text) - 2, 0))


def _parsegen() -> Any:
    stdlib = vars(email.feedparser.FeedParser)["_parsegen"]
    names = dict(vars(email.feedparser))
    names["re"] = _FeedParserRegex()
    line_end = names.get("NLCRE_eol")
    if isinstance(line_end, re.Pattern) and line_end.pattern == _LINE_END_AT_END:
        names["NLCRE_eol"] = _LineEndAtEnd(line_end)
    return types.FunctionType(
        stdlib.__code__, names, stdlib.__name__, stdlib.__defaults__, stdlib.__closure__
    )


class _FeedParser(email.feedparser.FeedParser):
    _parsegen = _parsegen()


def _as_text(raw: str, charset: str | None) -> str:
    """A raw header value (as the email package stores it: 8-bit bytes as surrogate
    escapes) as text: UTF-8 if it is, else `charset`, else a guess. Not unfolded, no
    RFC 2047 decoding."""
    if raw.isascii():
        return raw
    try:
        octets = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "replace").decode("utf-8")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if charset is not None:
        try:
            return octets.decode(charset)
        except (UnicodeError, LookupError):
            pass
    return decode_text(octets, None).text


# --- raw bytes --------------------------------------------------------------------------


def _split_head(raw: bytes) -> tuple[int, int]:
    """End of the header block and start of the body (after the first blank line)."""
    for blank in (b"\n", b"\r\n"):
        if raw.startswith(blank):
            return 0, len(blank)
    match = _HEAD_END.search(raw)
    if match is None:
        return len(raw), len(raw)
    return match.start(), match.end()


def _body_hash(raw: bytes, start: int) -> str:
    """sha256 of the body with CRLF as LF and trailing whitespace cut, read in chunks."""
    end = len(raw)
    while end > start:
        block = raw[max(start, end - 4096) : end]
        kept = len(block.rstrip())
        if kept:
            end -= len(block) - kept
            break
        end -= len(block)
    digest = hashlib.sha256()
    carry = b""
    for offset in range(start, end, _HASH_CHUNK):
        chunk = carry + raw[offset : min(offset + _HASH_CHUNK, end)]
        carry = b""
        if chunk.endswith(b"\r"):
            # The matching LF may start the next chunk.
            chunk, carry = chunk[:-1], b"\r"
        digest.update(chunk.replace(b"\r\n", b"\n"))
    digest.update(carry)
    return digest.hexdigest()


def _header_charset(message: Message, body_charset: str | None, defects: list[str]) -> str | None:
    """The charset for raw 8-bit header text that is not UTF-8, or None if there is none.

    Mailers that write raw 8-bit headers write them in the charset of their encoded words
    and of their body; a name or a subject alone is too short for a reliable guess. So:
    the charset of an RFC 2047 word in the headers, else the one an 8-bit body part was
    read with, else the top Content-Type's, else a guess over all such header text.
    """
    octets: list[bytes] = []
    declared: list[str | None] = []
    for _name, value in message.raw_items():
        if not isinstance(value, str):
            continue
        if "=?" in value:
            declared.extend(match.group(1) for match in _ENCODED_WORD.finditer(value))
        if not value.isascii():
            try:
                value.encode("utf-8", "surrogateescape").decode("utf-8")
            except UnicodeError:
                octets.append(value.encode("utf-8", "surrogateescape"))
    if not octets:
        return None
    sample = b"\n".join(octets)
    declared += [body_charset, message.get_content_charset()]
    charset = None
    for candidate in declared:
        codec = codec_name(candidate)
        if codec not in (None, "utf-8", "ascii") and decode_text(sample, codec).defect is None:
            charset = codec
            break
    if charset is None:
        guessed = decode_text(sample, None)
        charset = guessed.charset if guessed.charset not in ("utf-8", "ascii") else "cp1252"
    defects.append(f"headers: 8-bit text read as {charset}")
    return charset


# --- headers ----------------------------------------------------------------------------


def decode_header_value(value: str, charset: str | None = None) -> str:
    """A header value as text: raw 8-bit bytes decoded, unfolded, RFC 2047 words decoded.

    `value` is what the email package stores for a header parsed from bytes (8-bit bytes
    kept as surrogate escapes). 8-bit bytes that are not UTF-8 are read as `charset`, or
    guessed. Never raises.
    """
    value = _as_text(value, charset)
    if "\x1b" in value:
        # Raw ISO-2022-JP, not in an encoded word (old Japanese mailers).
        value = decode_text(value.encode("utf-8"), "iso-2022-jp").text
    if "\n" in value or "\r" in value:
        value = value.replace("\r", "").replace("\n", "")
    if "=?" in value:
        value = _decode_words(value)
    return value.strip()


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words. Adjacent words of one charset are joined as bytes
    first (a multi-byte character may be split over two words); whitespace between
    encoded words is dropped; text around them is kept as it is."""
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []
    position = 0

    def flush() -> None:
        for charset, octets in pending:
            out.append(decode_text(octets, charset).text)
        pending.clear()

    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        if not pending or between.strip(" \t"):
            flush()
            out.append(between)
        charset = match.group(1).split("*", 1)[0].lower()
        data = match.group(3).encode("utf-8", "replace")
        quoted = match.group(2) in "qQ"
        octets = binascii.a2b_qp(data, header=True) if quoted else _b64decode(data)
        if pending and pending[-1][0] == charset:
            pending[-1] = (charset, pending[-1][1] + octets)
        else:
            pending.append((charset, octets))
        position = match.end()
    flush()
    out.append(value[position:])
    return "".join(out)


def _b64decode(data: bytes) -> bytes:
    """Lenient base64 as mail clients read it: junk dropped, padding repaired."""
    data = _B64_JUNK.sub(b"", data.split(b"=", 1)[0])
    if len(data) % 4 == 1:
        data = data[:-1]
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return b""


def _read_headers(
    message: Message, charset: str | None, defects: list[str]
) -> tuple[dict[str, tuple[str, ...]], dict[str, list[str]], dict[str, str]]:
    """The capped, decoded header dict; the full decoded values of the wanted headers;
    the raw first value of the address and date headers."""
    collected: dict[str, list[str]] = {}
    wanted: dict[str, list[str]] = {}
    raw_first: dict[str, str] = {}
    dropped = 0
    truncated = False
    for index, (name, value) in enumerate(message.raw_items()):
        key = name.lower().strip()
        text_value = value if isinstance(value, str) else str(value)
        keep = index < MAX_HEADER_FIELDS
        if key in _WANTED:
            if key not in ("references", "in-reply-to") and len(text_value) > MAX_READ_VALUE:
                text_value = text_value[:MAX_READ_VALUE]
                defects.append(f"{key}: only the first {MAX_READ_VALUE} characters read")
            if key in _RAW_WANTED and key not in raw_first:
                raw_first[key] = text_value
            decoded = decode_header_value(text_value, charset)
            wanted.setdefault(key, []).append(decoded)
        elif keep:
            # Cut before decoding: a 1 MB header need not be decoded whole.
            decoded = decode_header_value(text_value[: MAX_HEADER_VALUE * 4], charset)
        if not keep:
            dropped += 1
            continue
        if len(decoded) > MAX_HEADER_VALUE:
            decoded = decoded[:MAX_HEADER_VALUE]
            truncated = True
        collected.setdefault(key, []).append(_clean(decoded))
    if truncated:
        defects.append(f"headers: values cut to {MAX_HEADER_VALUE} characters")
    if dropped:
        defects.append(f"headers: {dropped} fields beyond the first {MAX_HEADER_FIELDS} dropped")
    return {key: tuple(values) for key, values in collected.items()}, wanted, raw_first


def _first(wanted: dict[str, list[str]], name: str) -> str:
    values = wanted.get(name)
    return values[0] if values else ""


def _addresses(
    name: str,
    raw: str | None,
    charset: str | None,
    wanted: dict[str, list[str]],
    defects: list[str],
) -> tuple[Address, ...]:
    """The mailboxes of the first `name` header, lower-cased; malformed ones skipped."""
    if raw is None:
        return ()
    diagnostics: list[dict[str, Any]] = []
    simple = _SIMPLE_MAILBOX.fullmatch(raw) if raw.isascii() else None
    pairs: list[tuple[str, str]]
    if simple is not None:
        # Most headers are one plain mailbox; mail-parser's scanner costs ~45 us each.
        display = simple.group(1) if simple.group(1) is not None else simple.group(2) or ""
        pairs = [(display, simple.group(3) or simple.group(4))]
    else:
        try:
            pairs = get_addresses(_as_text(raw, charset), defects=diagnostics, decode_names=True)
        except _PARSER_BUGS:
            defects.append(f"{name}: mail-parser failed, read with the email package")
            pairs = getaddresses([_first(wanted, name)])
    defects.extend(f"{name}: {item.get('reason', 'unreadable')}" for item in diagnostics)
    found: list[Address] = []
    for display, address in pairs:
        if not address:
            continue
        address = address.strip().lower()
        if not _plausible(address):
            defects.append(f"{name}: skipped malformed address")
            continue
        if "=?" in display:
            # Quoted encoded words are not valid, but common (Outlook); mail-parser keeps
            # them literal.
            display = _decode_words(display)
        display = "" if display.strip().lower() == address else display.strip()
        found.append(Address(address=_clean(address), name=_clean(display)))
    if not found and name == "from" and wanted.get(name):
        # "From: Big Bug bb@bug.com": one unambiguous address in a malformed header.
        candidates = set(_LOOSE_ADDRESS.findall(wanted[name][0]))
        # Checked like the rest: the column (and RFC 5321) cap an address at 320.
        if len(candidates) == 1 and _plausible(address := candidates.pop().lower()):
            defects.append("from: address recovered from a malformed header")
            found.append(Address(address=_clean(address)))
    return tuple(dict.fromkeys(found))


def _plausible(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain)
        and len(address) <= 320
        and not any(ch.isspace() or ch in "<>,;" for ch in address)
    )


def _message_id(
    wanted: dict[str, list[str]], body_hash: str, defects: list[str]
) -> tuple[str, bool]:
    value = _first(wanted, "message-id")
    match = _MSG_ID.search(value)
    candidate = _clean("".join(match.group(1).split()) if match else "".join(value.split()))
    if match is None and candidate:
        defects.append("message-id: no angle brackets")
    # The brackets count towards the 998 (a header line's limit, and the column's).
    if candidate and _utf8_length(candidate) <= MAX_ID_LENGTH - 2 and "<" not in candidate:
        return f"<{candidate}>", False
    defects.append("message-id: missing, synthetic id used" if not value else "message-id: junk")
    seed = "\0".join(
        _WHITESPACE.sub(" ", _first(wanted, name)).strip()
        for name in ("from", "date", "subject", "to")
    )
    digest = hashlib.sha256(f"{seed}\0{body_hash}".encode("utf-8", "replace")).hexdigest()
    return f"<{digest[:32]}@maild.invalid>", True


def _ids(values: Iterable[str], name: str, defects: list[str]) -> tuple[str, ...]:
    """Bracketed message ids in order, deduplicated; unbracketed junk is ignored."""
    found: dict[str, None] = {}
    for value in values:
        for match in _MSG_ID.finditer(value):
            inner = _clean("".join(match.group(1).split()))
            if inner and _utf8_length(inner) <= MAX_ID_LENGTH - 2:
                found[f"<{inner}>"] = None
    ids = tuple(found)
    if len(ids) > MAX_REFERENCES:
        defects.append(f"{name}: kept the first and the last {MAX_REFERENCES - 1} of {len(ids)}")
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    return ids


def _utf8_length(text: str) -> int:
    """Length in UTF-8: an id is indexed, and PostgreSQL refuses an index entry of more than
    about 2,700 bytes (a refusal that would look like an outage and hold the mail back)."""
    return len(text.encode("utf-8", "replace"))


def _date(raw: str | None, charset: str | None, defects: list[str]) -> datetime | None:
    if raw is None or not raw.strip():
        defects.append("date: missing")
        return None
    try:
        result: Any = parse_mail_date(_as_text(raw, charset))
    except _PARSER_BUGS:
        result = None
    if result is not None:
        defects.extend(f"date: {reason}" for reason in result.reasons)
        if isinstance(result.value, datetime):
            value: datetime = result.value
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value = parsedate_to_datetime(decode_header_value(raw))
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("date: unparseable")
        return None
    if value.tzinfo is None:
        defects.append("date: no time zone, read as UTC")
        value = value.replace(tzinfo=UTC)
    return value


# --- body and attachments ---------------------------------------------------------------


class _Body:
    """What the walk over the MIME tree collects."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.mime_defects: set[str] = set()
        # the charset the first 8-bit body text was read with (not utf-8)
        self.charset: str | None = None
        # text parts with a file name: attachments, and the body if there is no other
        self.named_text: list[tuple[Message, str]] = []


def _walk(message: Message, defects: list[str]) -> _Body:
    """Collect body text and attachments, depth first in document order.

    An attached message (message/rfc822) is one attachment; the walk does not enter it.
    """
    body = _Body()
    stack: list[tuple[Message, bool, bool]] = [(message, False, False)]
    while stack:
        part, in_related, in_attachment = stack.pop()
        body.mime_defects.update(type(defect).__name__ for defect in part.defects)
        content_type = part.get_content_type()
        maintype = part.get_content_maintype()
        disposition = part.get_content_disposition()
        if maintype == "message" and part is not message:
            _attach_message(part, body, defects)
            continue
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                inside = in_attachment or disposition == "attachment"
                related = content_type == "multipart/related"
                stack.extend(
                    (child, related, inside)
                    for child in reversed(children)
                    if isinstance(child, Message)
                )
            continue
        filename = _filename(part, defects)
        is_text = content_type in ("text/plain", "text/html") or maintype == "multipart"
        if is_text and not in_attachment and disposition != "attachment":
            if filename is None:
                _add_text(part, content_type, body, defects)
                continue
            body.named_text.append((part, content_type))
        _attach_leaf(part, content_type, filename, disposition, in_related, body)
    if not body.plain and not body.html and body.named_text:
        part, content_type = body.named_text[0]
        _add_text(part, content_type, body, defects)
    return body


def _add_text(part: Message, content_type: str, body: _Body, defects: list[str]) -> None:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload.strip():
        return
    body.mime_defects.update(type(defect).__name__ for defect in part.defects)
    declared = part.get_content_charset()
    is_html = content_type == "text/html"
    if declared is None and is_html:
        meta = _META_CHARSET.search(payload, 0, 4096)
        declared = meta.group(1).decode("ascii") if meta else None
    decoded = decode_text(payload, declared)
    if decoded.defect:
        defects.append(f"{content_type}: {decoded.defect}")
    if body.charset is None and decoded.charset not in ("ascii", "utf-8"):
        body.charset = decoded.charset
    if content_type.startswith("multipart/"):
        defects.append(f"{content_type}: no usable boundary, read as text")
    (body.html if is_html else body.plain).append(normalize_newlines(decoded.text))


def _storable_type(content_type: str) -> str:
    """RFC 6838 caps type and subtype at 127 characters each; a longer one is junk, kept
    as what it is to us (the column holds 255)."""
    return content_type if len(content_type) <= 255 else "application/octet-stream"


def _attach_leaf(
    part: Message,
    content_type: str,
    filename: str | None,
    disposition: str | None,
    in_related: bool,
    body: _Body,
) -> None:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    body.mime_defects.update(type(defect).__name__ for defect in part.defects)
    content_id = _content_id(part)
    inline = content_id is not None and (
        disposition == "inline" or (disposition is None and in_related)
    )
    body.attachments.append(
        ParsedAttachment(
            filename=filename or _generated_name(len(body.attachments) + 1, content_type),
            content_type=_storable_type(content_type),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_id=content_id,
            inline=inline,
        )
    )


def _attach_message(part: Message, body: _Body, defects: list[str]) -> None:
    """An attached message/* part as one attachment of its bytes."""
    content_type = part.get_content_type()
    data = _message_bytes(part)
    filename = _filename(part, defects)
    if filename is None and content_type in ("message/rfc822", "message/global"):
        inner = part.get_payload(0) if part.is_multipart() else None
        subject = _inner_subject(inner) if isinstance(inner, Message) else ""
        filename = _safe_filename(subject + ".eml") if subject else None
    body.attachments.append(
        ParsedAttachment(
            filename=filename or _generated_name(len(body.attachments) + 1, content_type),
            content_type=_storable_type(content_type),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_id=_content_id(part),
            inline=False,
        )
    )


def _message_bytes(part: Message) -> bytes:
    """The body of a message/* part as bytes: the embedded message written back."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else b""
    out: list[bytes] = []
    try:
        _serialize_body(part, out)
    except RecursionError as exc:
        raise Quarantine(STEP, "MIME nesting too deep") from exc
    data = b"".join(out)
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        # Not allowed for message/rfc822, but sent: the email package parsed the base64
        # text as a headerless message.
        data = _b64decode(data) or data
    elif encoding == "quoted-printable":
        data = binascii.a2b_qp(data.lstrip(b"\r\n"))
    return data


def _serialize(message: Message, out: list[bytes]) -> None:
    """Write a parsed message back as bytes.

    Header fields are written as they were received (the email package's generator
    would re-fold them, and is several times slower); line ends are LF.
    """
    for name, value in message.raw_items():
        out.append(_octets(f"{name}: {value}\n"))
    out.append(b"\n")
    _serialize_body(message, out)


def _serialize_body(message: Message, out: list[bytes]) -> None:
    payload = message.get_payload()
    if isinstance(payload, str):
        out.append(_octets(payload))
        return
    if not isinstance(payload, list):
        return
    parts = [sub for sub in payload if isinstance(sub, Message)]
    boundary = message.get_boundary() if message.get_content_maintype() == "multipart" else None
    if boundary is None:
        # message/rfc822: the embedded message; message/delivery-status: header blocks.
        for index, sub in enumerate(parts):
            if index:
                out.append(b"\n")
            _serialize(sub, out)
        return
    if message.preamble:
        out.append(_octets(message.preamble + "\n"))
    for sub in parts:
        out.append(_octets(f"--{boundary}\n"))
        _serialize(sub, out)
        out.append(b"\n")
    out.append(_octets(f"--{boundary}--\n"))
    if message.epilogue:
        out.append(_octets(message.epilogue))


def _octets(text: str) -> bytes:
    """Text the email package read from bytes, as those bytes (8-bit ones are escapes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _inner_subject(inner: Message) -> str:
    for name, value in inner.raw_items():
        if name.lower() == "subject":
            text_value = value if isinstance(value, str) else str(value)
            return _WHITESPACE.sub(" ", decode_header_value(text_value)).strip()
    return ""


def _raw_header(part: Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) else str(value)
    return None


def _content_id(part: Message) -> str | None:
    value = _raw_header(part, "content-id")
    if value is None:
        return None
    cid = decode_header_value(value).strip().strip("<>").strip()
    return cid[:MAX_ID_LENGTH] or None


def _filename(part: Message, defects: list[str]) -> str | None:
    """The file name the part declares (RFC 2231 and RFC 2047 decoded), made safe."""
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        value: Any = part.get_param(param, None, header)
        if value is None:
            continue
        if isinstance(value, tuple):
            charset, _language, text_value = value
            try:
                octets = str(text_value).encode("latin-1", "surrogateescape")
            except UnicodeEncodeError:
                octets = str(text_value).encode("utf-8", "surrogateescape")
            decoded = decode_text(octets, str(charset) if charset else None)
            if decoded.defect:
                defects.append(f"filename: {decoded.defect}")
            name = decoded.text
        else:
            name = decode_header_value(str(value))
        safe = _safe_filename(name)
        if safe != name:
            defects.append("filename: made safe" if safe else "filename: unusable, replaced")
        if safe:
            return safe
    return None


def attachment_filename(part: Message) -> str | None:
    """The safe display name of an attachment, as the ticket records it (None if none)."""
    return _filename(part, [])


def _safe_filename(name: str) -> str | None:
    """A display name, never a path: the last path component, without control characters
    or trailing dots, a device name prefixed with '_', at most 255 characters. None if
    nothing is left."""
    name = _UNSAFE_FILENAME.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = name.strip().rstrip(". ")
    if not name:
        return None
    if name.split(".", 1)[0].rstrip().lower() in _RESERVED_FILENAMES:
        name = "_" + name
    if len(name) > 255:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            name = stem[: 254 - len(extension)] + "." + extension
        else:
            name = name[:255]
    return name


def _generated_name(number: int, content_type: str) -> str:
    return f"attachment-{number}{_EXTENSIONS.get(content_type, '.bin')}"


# --- small helpers ----------------------------------------------------------------------


def _join(parts: list[str]) -> str:
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return "\n".join(part if part.endswith("\n") else part + "\n" for part in parts)


def _clean(text: str) -> str:
    """NUL characters replaced: no database text column takes them."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
