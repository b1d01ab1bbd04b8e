"""Text helpers of the parse step: charset fallback, HTML to text, reply stripping.

Pure functions, no I/O. Only the parse step calls them.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, Final

import html2text
from charset_normalizer import from_bytes
from mailparser_reply import EmailReplyParser
from mailparser_reply.constants import MAIL_LANGUAGES, QUOTED_MATCH_INCLUDE
from mailparser_reply.parser import EmailMessage, EmailReply

__all__ = [
    "Decoded",
    "codec_name",
    "decode_text",
    "html_to_text",
    "normalize_newlines",
    "strip_reply",
]


# --- charsets ---------------------------------------------------------------------------

# Labels mail software writes whose Python codec is a subset of what the sender meant
# (the same choices browsers make, WHATWG encoding standard).
_CHARSET_ALIASES: Final = {
    "iso-8859-1": "cp1252",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "iso_8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "iso-8859-8-i": "iso-8859-8",
    "tis-620": "cp874",
    "iso-8859-9": "cp1254",
    "utf8": "utf-8",
}

# Python codecs that are not charsets: decoding with them would process escapes
# ("C:\new" -> newline) or run IDNA. A mail may declare any of them.
_NOT_CHARSETS: Final = frozenset(
    {
        "unicode-escape",
        "raw-unicode-escape",
        "escape-codec",
        "idna",
        "punycode",
        "undefined",
        "mbcs",
        "oem",
        "palmos",
    }
)

# Codecs for which ASCII bytes do not mean ASCII text.
_NOT_ASCII_BASED: Final = (
    "iso2022",
    "utf-7",
    "utf-16",
    "utf-32",
    "hz",
    "cp037",
    "cp273",
    "cp424",
    "cp500",
    "cp875",
    "cp1026",
    "cp1140",
)

_HUNGARIAN_AS_LATIN1: Final = re.compile("[\u00f5\u00fb\u00d5\u00db]")
_NOT_HUNGARIAN: Final = re.compile(
    "[\u00e3\u00c3\u00e2\u00c2\u00e0\u00c0\u00e8\u00c8\u00ea\u00ca\u00eb\u00cb\u00ee"
    "\u00ce\u00ef\u00f4\u00d4\u00f9\u00d9\u00e7\u00c7\u00f1\u00d1\u00e4\u00c4]"
)
_ACUTE_VOWEL: Final = re.compile("[\u00e1\u00e9\u00ed\u00f3\u00fa\u00c1\u00c9\u00cd\u00d3\u00da]")

# charset-normalizer is slow on big input and needs only a sample to decide.
_DETECT_SAMPLE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded text part: the text, the codec used and what went wrong, if anything."""

    text: str
    charset: str
    defect: str | None = None


def codec_name(label: str | None) -> str | None:
    """The Python codec name for a declared charset label, or None if unusable."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        canonical = codecs.lookup(name).name
    except (LookupError, ValueError):
        return None
    if canonical in _NOT_CHARSETS:
        return None
    return canonical


def _try_decode(payload: bytes, codec: str) -> str | None:
    try:
        text = payload.decode(codec)
    except (UnicodeError, LookupError, ValueError):
        return None
    if codec not in ("utf-8", "ascii") and not text.isascii():
        # Some codecs (utf-7, utf-16) can produce lone surrogates, which no UTF-8 sink takes.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def decode_text(payload: bytes, declared: str | None) -> Decoded:
    """Decode the bytes of a text part.

    Order: the declared charset (strict), then strict UTF-8, then charset-normalizer's
    best guess, then UTF-8 with replacement characters. Never raises. Backslashes are
    kept exactly: no codec that processes escapes is ever used.
    """
    codec = codec_name(declared)
    if payload.isascii():
        if b"\x1b" in payload:
            # ISO-2022 (Japanese mail, often undeclared) is 7-bit: escape sequences switch
            # the character set.
            stateful = codec if codec and codec.startswith("iso2022") else "iso2022_jp"
            text = _try_decode(payload, stateful)
            if text is not None:
                return Decoded(text, stateful)
        elif codec is None or not codec.startswith(_NOT_ASCII_BASED):
            return Decoded(payload.decode("ascii"), "ascii")
    if codec is not None:
        text = _try_decode(payload, codec)
        if text is not None:
            if codec == "cp1252" and _HUNGARIAN_AS_LATIN1.search(text):
                fixed = _hungarian_latin2(payload, text)
                if fixed is not None:
                    return fixed
            return Decoded(text, codec)
    if declared and codec is None:
        problem = f"unknown charset {declared.strip()[:40]!r}"
    elif declared:
        problem = f"not {declared.strip()[:40]}"
    else:
        problem = "undeclared 8-bit"
    if codec != "utf-8":
        text = _try_decode(payload, "utf-8")
        if text is not None:
            return Decoded(text, "utf-8", f"charset: {problem}, decoded as utf-8")
    guess = from_bytes(payload[:_DETECT_SAMPLE]).best()
    if guess is not None:
        guessed = codec_name(guess.encoding)
        if guessed is not None:
            if len(payload) <= _DETECT_SAMPLE:
                text = str(guess)
            else:
                text = payload.decode(guessed, errors="replace")
            return Decoded(text, guessed, f"charset: {problem}, guessed {guessed}")
    text = payload.decode("utf-8", errors="replace")
    return Decoded(text, "utf-8", f"charset: {problem}, undecodable bytes replaced")


def _hungarian_latin2(payload: bytes, text: str) -> Decoded | None:
    """Hungarian text sent as Latin-2/Windows-1250 but declared ISO-8859-1.

    Read as Latin-1 the two letters Latin-1 lacks come out as "õ" and "û" ("mûködik").
    Other languages with õ or û (Portuguese, French, Estonian) give themselves away with
    letters Hungarian never uses, or by the lack of acute vowels.
    """
    if _NOT_HUNGARIAN.search(text) or not _ACUTE_VOWEL.search(text):
        return None
    fixed = _try_decode(payload, "cp1250")
    if fixed is None:
        return None
    return Decoded(fixed, "cp1250", "charset: not iso-8859-1, Hungarian read as cp1250")


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- HTML -------------------------------------------------------------------------------

# html2text is about 1 s per MB of HTML. Parts of HTML that never become text are cut
# with regexes first (linear), and only the first _HTML_TEXT_LIMIT characters of what is
# left are converted.
_HTML_TEXT_LIMIT: Final = 256 * 1024
_HTML_NOISE: Final = re.compile(
    r"<!--.*?(?:-->|\Z)|<(head|style|script|title)\b[^>]*>.*?(?:</\1\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
# html2text escapes markdown syntax in text ("1. a" -> "1\. a", "- a" -> "\- a", a
# backslash before one of these characters is doubled). The output is read as plain
# text, so the escapes are taken out again; a backslash before any other character was
# never touched ("C:\new\table" stays as written).
_MD_ESCAPE: Final = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_TRAILING_SPACE: Final = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS: Final = re.compile(r"\n{3,}")


def html_to_text(html: str) -> tuple[str, bool]:
    """Readable text for an HTML body, and whether it was cut to the size limit.

    Links stay readable as `[text](url)`, images become their alt text, no line wrapping.
    """
    html = _HTML_NOISE.sub(" ", html)
    truncated = len(html) > _HTML_TEXT_LIMIT
    if truncated:
        html = html[:_HTML_TEXT_LIMIT]
    converter: Any = html2text.HTML2Text(bodywidth=0)
    converter.unicode_snob = True
    converter.images_to_alt = True
    converter.ignore_emphasis = True
    converter.single_line_break = False
    text: str = converter.handle(html)
    text = _MD_ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n") + "\n" if text.strip() else "", truncated


# --- reply stripping --------------------------------------------------------------------

# Hungarian for mail-parser-reply, modelled on its 'de' entry. Every pattern may use
# only non-capturing groups apart from the one outer group of `wrote_header`: the
# library turns every non-empty group into a split point.
_HU: Final[dict[str, Any]] = {
    "wrote_header": (
        r"^("
        + QUOTED_MATCH_INCLUDE
        # Every alternative ends in "írta"; looking for it first keeps the lazy middle
        # parts (quadratic in the line length) off lines that cannot match.
        + r"(?=[^\n]*\u00edrta|[^\n]*\n[^\n]*\u00edrta)(?:"
        # Thunderbird: "2013.02.08. 7:31 keltezéssel, Győrvári Eszter írta:"
        r"\d{4}\. ?\d{1,2}\. ?\d{1,2}\.? {1,2}\d{1,2}:\d{2}(?::\d{2})? keltez\u00e9ssel,"
        r"\s?(?:.+?\s?.+?)\s?\u00edrta:"
        # Gmail (older) and Apple Mail: "2024. jan. 5., P, 10:00 Név <x@y.hu> ezt írta:",
        # "2024. jan. 5. dátummal, 10:00 időpontban Név <x@y.hu> írta:"
        r"|\d{4}\. ?[^\n]{1,40}?\d{1,2}:\d{2}\s?(?:.+?\s?.+?)\s?(?:ezt )?\u00edrta:"
        # Gmail: "Név <x@y.hu> ezt írta (időpont: 2024. jan. 5., P, 10:00):"
        r"|(?:.+?\s?.+?)\sezt \u00edrta\s\(id\u0151pont:[^\n]{0,60}?\n?[^\n]{0,60}?\):"
        r")"
        # Outlook: "-----Eredeti üzenet-----"
        r"|-{3,} ?Eredeti \u00fczenet ?-{3,}"
        r")$"
    ),
    # Outlook: "Feladó: ...\nElküldve: ...\nCímzett: ...\nTárgy: ..."
    "from_header": (
        r"((?:(?:^|\n|\n"
        + QUOTED_MATCH_INCLUDE
        + r")[* ]*(?:Felad\u00f3|Elk\u00fcldve|C\u00edmzett|T\u00e1rgy|M\u00e1solat|D\u00e1tum"
        r"|Szervezet|Cc):[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})"
    ),
    "disclaimers": [
        "Jogi nyilatkozat:",
        "Titoktart\u00e1si nyilatkozat:",
        "Bizalmass\u00e1gi nyilatkozat:",
    ],
    # A sign-off alone on its line, or followed by punctuation and a name: "Tisztelettel
    # kérem, ..." opens a sentence and must not cut the mail.
    "signatures": [
        r"(?:(?:Bar\u00e1ti|Sz\u00edv\u00e9lyes|Sz\u00edves|Meleg) )?"
        r"\u00dcdv\u00f6zlettel[ \t]*(?:[:,.!][^\n]{0,60})?$",
        r"Tisztelettel[ \t]*(?:[:,.!][^\n]{0,60})?$",
        r"K\u00f6sz\u00f6nettel[ \t]*(?:[:,.!][^\n]{0,60})?$",
        r"\u00dcdv[ \t]*(?:[:,.!][^\n]{0,60})?$",
    ],
    # "Az iPhone-omról küldve", "Elküldve a Samsung Galaxy okostelefonomról". The library
    # wants at least one more character after the match, hence the lookahead.
    "sent_from": (
        r"Az iP(?:hone|ad)-(?:om|em)r[\u00f3\u0151]l"
        r"|Samsung Galaxy okostelefonr\u00f3l"
        r"|Elk\u00fcldve [^\n]{0,60}?(?=\w*r[\u00f3\u0151]l$)"
    ),
}
MAIL_LANGUAGES.setdefault("hu", _HU)

_REPLY_LANGUAGES: Final = ("en", "de", "fr", "hu")
# Built once, at import: EmailReplyParser drops languages the library does not know, which
# is checked here; its regexes are compiled here too. EmailReplyParser.read() would build
# and look them up again for every mail and does not offer keep_hyphen_lists, so each mail
# gets an EmailMessage carrying the compiled regexes. keep_hyphen_lists: a "- item" list
# is not a signature ("--" still is).
_REPLY_PARSER: Final[Any] = EmailReplyParser(languages=list(_REPLY_LANGUAGES))
if sorted(_REPLY_PARSER.languages) != sorted(_REPLY_LANGUAGES):
    raise ImportError(f"mail-parser-reply lacks a language of {_REPLY_LANGUAGES}")
_REPLY_TEMPLATE: Final[Any] = EmailMessage(
    text="", languages=list(_REPLY_PARSER.languages), keep_hyphen_lists=True
)
_REPLY_REGEXES: Final[dict[str, Any]] = {
    "_header_regex": _REPLY_TEMPLATE.HEADER_REGEX,
    "_signature_regex": _REPLY_TEMPLATE.SIGNATURE_REGEX,
    "_disclaimers_regex": _REPLY_TEMPLATE.DISCLAIMERS_REGEX,
}

# The library's regexes backtrack badly: on 10 KB of blank lines or of "On On On ..."
# one call takes seconds (quadratic or worse). So it only ever sees a probe: the first
# _STRIP_HEAD_CHARS / _STRIP_HEAD_LINES of the text, whitespace runs collapsed, at most
# two blank lines in a row, long lines shortened to their two ends (an attribution line
# keeps its start and its "wrote:"). What it keeps is mapped back to the original lines.
# A header further down than the head is not found; the text is then kept whole.
_STRIP_HEAD_CHARS: Final = 12 * 1024
_STRIP_HEAD_LINES: Final = 300
_PROBE_LINE_HEAD: Final = 40
_PROBE_LINE_TAIL: Final = 60
_MATCH_WINDOW: Final = 64
_SPACE_RUNS: Final = re.compile(r"[ \t\u00a0\u200b\f\v]+")
_SEPARATOR: Final = re.compile(r"[-_=*]{2,}$")
# A signature's first line has at most this many words ("Best regards,", "Sent from my
# iPhone"); a longer line is a sentence that happens to start with "Thanks,".
_SIGN_OFF_WORDS: Final = 5
_SIGNATURE_TRIES: Final = 8


def _split_head(text: str) -> tuple[str, str]:
    """The head the reply parser looks at (whole lines where possible) and the rest."""
    limit = min(len(text), _STRIP_HEAD_CHARS)
    position = 0
    for _ in range(_STRIP_HEAD_LINES):
        newline = text.find("\n", position, limit)
        if newline < 0:
            break
        position = newline + 1
    else:
        return text[: position - 1], text[position - 1 :]
    if limit == len(text):
        return text, ""
    cut = position - 1 if position > 0 else limit
    return text[:cut], text[cut:]


def _probe(lines: list[str]) -> tuple[list[str], list[int]]:
    """Probe lines for the reply parser and, for each, the index of its original line."""
    probe: list[str] = []
    origin: list[int] = []
    blank_run = 0
    for index, line in enumerate(lines):
        short = _SPACE_RUNS.sub(" ", line).strip()
        if len(short) > _PROBE_LINE_HEAD + _PROBE_LINE_TAIL:
            short = short[:_PROBE_LINE_HEAD] + " " + short[-_PROBE_LINE_TAIL:]
        if not short:
            blank_run += 1
            if blank_run > 2:
                continue
        else:
            blank_run = 0
        probe.append(short)
        origin.append(index)
    return probe, origin


def _map_back(body: str, probe: list[str], origin: list[int], lines: list[str]) -> list[str]:
    """The original lines behind the lines the reply parser kept, in order.

    A kept line equal to a probe line gives back its original line (with indentation
    and full length); a line the library cut in the middle is kept as the library left it.
    """
    kept: list[str] = []
    position = 0
    for line in body.split("\n"):
        stripped = line.strip()
        end = min(len(probe), position + _MATCH_WINDOW)
        for candidate in range(position, end):
            if probe[candidate] == stripped:
                kept.append(lines[origin[candidate]])
                position = candidate + 1
                break
        else:
            kept.append(stripped)
    return kept


def newest_reply(text: str) -> tuple[EmailReply, bool]:
    """The library's newest reply of `text` (`EmailMessage.read().replies[0]`), and whether
    it is the only one.

    Worked out as `read` does, but stopping there: `read` runs the header regex over the
    whole text and the signature regexes over every older reply too, which on a mail
    with quoted history cost as much again as this (bench/ingest.py). tests/test_parse.py
    holds it to `read` on real-world mails.
    """
    message = EmailMessage(
        text=text,
        languages=list(_REPLY_TEMPLATE.languages),
        keep_hyphen_lists=True,
        **_REPLY_REGEXES,
    )
    normalized: str = message.text
    position, header_before = 0, ""
    for match in message.HEADER_REGEX.finditer(normalized):
        for header in filter(None, match.groups()):
            end = normalized.find(header, position + 1 if position > 0 else position)
            reply = _reply(message, header_before, normalized[position:end])
            position, header_before = max(end, 0), header
            if reply.content:
                return reply, False
    return _reply(message, header_before, normalized[position:]), True


def _reply(message: EmailMessage, headers: str, content: str) -> EmailReply:
    disclaimers, signatures = message._process_signatures_disclaimers(content)
    return EmailReply(
        headers=headers, content=content, signatures=signatures, disclaimers=disclaimers
    )


def _reply_body(reply: Any, keep_signature: bool = False) -> tuple[str, bool]:
    """The text of a reply without its header, disclaimers and signature (unless kept);
    and whether a signature was cut.

    The library takes the first line that starts with a sign-off word ("Thanks,",
    "Grüße", "Best,") as the start of the signature and drops everything after it, so
    "Thanks, that helped. But now the printer ..." would lose the question. Here a
    signature starts only at a match whose first line is short, as a sign-off is.
    """
    signature: str = reply.signatures
    content: str = reply.content
    if keep_signature:
        return _without_boilerplate(reply, content), False
    if not signature or _is_sign_off(signature):
        return reply.body, bool(signature)
    # Look again below the first line of what the library took for a signature.
    position = _next_line(content, content.find(signature))
    regex = _REPLY_REGEXES["_signature_regex"]
    signed = False
    for _ in range(_SIGNATURE_TRIES):
        match = regex.search(content, position)
        if match is None:
            break
        start = match.start() + len(match.group()) - len(match.group().lstrip())
        if _is_sign_off(content[start:]):
            content, signed = content[:start], True
            break
        position = _next_line(content, start)
    return _without_boilerplate(reply, content), signed


def _without_boilerplate(reply: Any, content: str) -> str:
    """`content` without the reply's disclaimers and its quoted header."""
    for disclaimer in reply.disclaimers:
        content = content.replace(disclaimer, "")
    if reply.headers:
        content = content.replace(reply.headers, "")
    return content.strip()


def _next_line(text: str, position: int) -> int:
    """Where the line after the one at `position` starts (the end if none, or if < 0)."""
    newline = text.find("\n", position) if position >= 0 else -1
    return len(text) if newline < 0 else newline + 1


def _is_sign_off(signature: str) -> bool:
    """Whether a signature's first line is short, as a sign-off is ("Best regards,")."""
    return len(signature.split("\n", 1)[0].split()) <= _SIGN_OFF_WORDS


def _interleaved(probe: list[str]) -> bool:
    """An answer written between quoted lines, under an attribution ("On ... wrote:").

    The library cuts at the attribution and would lose the answers; such a text is kept.
    A line like "--" or "_____" (signature, list footer) ends the search.
    """
    quote = next((index for index, line in enumerate(probe) if line.startswith(">")), None)
    if quote is None:
        return False
    before = next((line for line in reversed(probe[:quote]) if line), "")
    if not before.endswith(":"):
        return False
    for line in probe[quote:]:
        if _SEPARATOR.match(line):
            return False
        if line and not line.startswith(">"):
            return True
    return False


def _without_trailing_quote(text: str) -> str:
    """`text` without what trails it as history: a quoted block (history quoted without a
    header the library knows, such as Zimbra's "- Le ... a écrit :"), the line ending in
    ":" that introduces it, and separator lines ("-----", "_____")."""
    end = len(text)
    cut = -1
    quoted = False
    for _ in range(_STRIP_HEAD_LINES):
        newline = text.rfind("\n", 0, end)
        line = text[newline + 1 : end].strip()
        if line.startswith(">"):
            quoted = True
        elif line and not _SEPARATOR.match(line):
            if quoted and line.endswith(":"):
                cut = newline + 1
            break
        if line:
            cut = newline + 1
        if newline < 0:
            break
        end = newline
    else:
        # A longer quoted block: where it starts is not known, keep it.
        return text
    return text[:cut] if cut >= 0 else text


def strip_reply(text: str, keep_signature: bool = False) -> str:
    """The newest part of a mail body: quoted history and signature removed (the
    signature stays with `keep_signature`: an agent's reply relayed to a customer).

    Recognises reply headers and sign-offs in English, German, French and Hungarian.
    Never returns an empty string for a non-empty text: if nothing would be left, the
    whole text is returned.
    """
    if not text.strip():
        return text
    normalized = normalize_newlines(text)
    head, tail = _split_head(normalized)
    lines = head.split("\n")
    probe, origin = _probe(lines)
    if _interleaved(probe):
        candidate = normalized
    else:
        first, only = newest_reply("\n".join(probe))
        body, signed = _reply_body(first, keep_signature)
        candidate = "\n".join(_map_back(body, probe, origin, lines))
        if tail and only and not signed:
            # Nothing ended the newest part inside the head: the rest belongs to it.
            candidate += tail
    candidate = _without_trailing_quote(candidate).strip("\n")
    if not candidate.strip() or candidate.strip() == text.strip():
        return text
    return candidate + "\n"
