"""Deterministic corpus of support mails for the maild benchmarks.

Only the standard library is used (``random`` + the ``email`` package); nothing
from maild is imported, so the corpus can be generated and checked against any
maild build.

The corpus is a stream of inbound mails to ``support@example.com``:

* new requests and replies in threads (``In-Reply-To``/``References`` point at
  Message-IDs generated earlier in the same corpus; ``Re:``/``AW:``/``Vá:``
  subjects, about half of the replies carry a ticket tag ``[#N]`` where N is the
  ordinal of the thread's first mail among the new requests; quoted history in
  "On ... wrote:" / "Am ... schrieb ...:" / "... írta:" / Outlook header-block
  form);
* client styles Gmail, Outlook (Thread-Index, X-MS-Has-Attach, HTML
  alternative, inline signature logos), Apple Mail / iPhone and Thunderbird;
* bodies in UTF-8, ISO-8859-2 (Hungarian) and Windows-1252, sent as
  quoted-printable, base64, 8bit (or 7bit when pure ASCII); HTML alternatives
  and some HTML-only mails;
* ~10 % with attachments (PDF/PNG/JPEG/ZIP/XLSX, mostly 10-300 KB, a few up
  to 3 MB, bytes drawn from the seeded RNG), ~3 % auto-replies
  (``Auto-Submitted: auto-replied``) and ~2 % bounces (``multipart/report;
  report-type=delivery-status`` from MAILER-DAEMON with ``Return-Path: <>``).

The same ``(count, seed)`` always yields byte-identical files.

CLI: ``python bench/corpus.py DEST [--count N] [--seed S]``
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import quopri
import random
import sys
import time
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.utils import format_datetime, formataddr
from pathlib import Path
from urllib.parse import quote

SUPPORT_ADDR = "support@example.com"
SUPPORT_NAME = {
    "en": "Example Support",
    "de": "Example Kundenservice",
    "hu": "Example Ügyfélszolgálat",
}
MX = "mx.example.com"
CET = timezone(timedelta(hours=1))
PST = timezone(timedelta(hours=-8))

# Shares of the mix (of the total count).
SHARE_BOUNCE = 0.02
SHARE_AUTO = 0.03
SHARE_REPLY_OF_REGULAR = 0.52  # of the non-bounce, non-auto mails
SHARE_ATTACH = 0.10  # of the total; only regular mails carry attachments
SHARE_HTML_ONLY = 0.05  # of the regular mails

# Written as-is: headers are folded by hand (max_line_length=None), LF line ends.
_GEN_POLICY = policy.compat32.clone(linesep="\n", max_line_length=None, mangle_from_=False)

# --------------------------------------------------------------------------- text pools

SUBJECTS = {
    "en": [
        "Invoice {inv} shows the wrong amount",
        "Cannot log in to my account",
        "Order {order} has not arrived",
        "Request for refund – order {order}",
        "Error message when exporting reports",
        "Question about my contract renewal",
        "Password reset link does not work",
        "Change of billing address",
        "App crashes after the latest update",
        "Duplicate charge on my credit card",
        "Urgent: API returns 500 since this morning",
        "How do I add more users to our plan?",
    ],
    "de": [
        "Rechnung {inv} – falscher Betrag",
        "Kann mich nicht mehr anmelden",
        "Bestellung {order} ist noch nicht angekommen",
        "Bitte um Rückerstattung für Bestellung {order}",
        "Fehlermeldung beim Export der Berichte",
        "Frage zur Vertragsverlängerung",
        "Link zum Zurücksetzen des Passworts funktioniert nicht",
        "Änderung der Rechnungsadresse",
        "App stürzt nach dem Update ständig ab",
        "Doppelte Abbuchung über 49,90 €",
        "Dringend: Schnittstelle liefert seit heute früh Fehler 500",
        "Weitere Benutzer für unseren Tarif hinzufügen",
    ],
    "hu": [
        "Hibás összeg a(z) {inv} számú számlán",
        "Nem tudok bejelentkezni a fiókomba",
        "A(z) {order} számú rendelés még nem érkezett meg",
        "Visszatérítési kérelem – {order} rendelés",
        "Hibaüzenet a jelentések exportálásakor",
        "Kérdés a szerződés meghosszabbításáról",
        "Nem működik a jelszó-visszaállító link",
        "Számlázási cím módosítása",
        "Az alkalmazás összeomlik a frissítés után",
        "Kétszer terhelték meg a bankkártyámat",
        "Sürgős: reggel óta 500-as hibát ad az API",
        "Hogyan vehetek fel új felhasználókat az előfizetésünkbe?",
    ],
}

SENTENCES = {
    "en": [
        "Since yesterday I can't log in to my account, although my password is definitely correct.",
        "The amount on the invoice doesn't match the total shown in my order.",
        "Could you please look into this as soon as possible?",
        "The error message says: “Unknown error – please try again later”.",
        "The app keeps crashing right after the splash screen since the latest update.",
        "According to the tracking page the parcel has been in transit for over a week.",
        "I'd like to know how I can renew my contract before it expires at the end of the month.",
        "Please find attached a screenshot and a copy of the invoice.",
        "Let me know if you need any further information.",
        "We've already checked our firewall settings, they are fine.",
        "It's rather urgent because we have to close our books by the end of the month.",
        "I already wrote to you two weeks ago but never got a reply.",
        "My customer number is {cust}.",
        "I was charged £49.90 twice on my credit card.",
        "Thanks for the quick reply – unfortunately the suggested fix didn't work.",
        "Our team of 25 users depends on this, so any workaround would be appreciated.",
        "I tried it in Firefox, Chrome and Safari, the result is always the same.",
        "The problem started on Monday around 9 am, nothing changed on our side.",
    ],
    "de": [
        "Seit gestern kann ich mich nicht mehr in mein Konto einloggen, obwohl das Passwort "
        "stimmt.",
        "Der Betrag auf der Rechnung stimmt nicht mit der Bestellung überein.",
        "Könnten Sie das bitte so schnell wie möglich prüfen?",
        "Die Fehlermeldung lautet: „Unbekannter Fehler – bitte später erneut versuchen“.",
        "Nach dem letzten Update stürzt die App direkt nach dem Start ab.",
        "Laut Sendungsverfolgung ist das Paket seit über einer Woche unterwegs.",
        "Ich möchte gerne wissen, wie ich meinen Vertrag vor Ablauf verlängern kann.",
        "Im Anhang finden Sie einen Screenshot sowie die Rechnung.",
        "Bitte geben Sie mir Bescheid, falls Sie weitere Informationen benötigen.",
        "Die Firewall-Einstellungen haben wir bereits überprüft, daran liegt es nicht.",
        "Es ist leider dringend, da wir bis Monatsende die Buchhaltung abschließen müssen.",
        "Ich habe Ihnen bereits vor zwei Wochen geschrieben, aber keine Antwort erhalten.",
        "Meine Kundennummer lautet {cust}.",
        "Mir wurden 49,90 € doppelt abgebucht.",
        "Vielen Dank für die schnelle Rückmeldung, leider hat der Vorschlag nicht geholfen.",
        "Unser Team mit 25 Benutzern ist darauf angewiesen – gibt es eine Übergangslösung?",
        "Ich habe es in Firefox, Chrome und Safari versucht, immer mit demselben Ergebnis.",
        "Das Problem tritt seit Montag gegen 9 Uhr auf, bei uns wurde nichts geändert.",
    ],
    "hu": [
        "Tegnap óta nem tudok belépni a fiókomba, pedig a jelszavam biztosan helyes.",
        "A számlán szereplő összeg nem egyezik a megrendelésben látható végösszeggel.",
        "Kérem, szíveskedjenek mielőbb ellenőrizni a problémát.",
        'A hibaüzenet szövege: "Ismeretlen hiba történt, próbálja újra később".',
        "Az alkalmazás a legújabb frissítés óta induláskor azonnal összeomlik.",
        "Múlt hét óta várok a rendelésemre, a csomagkövetés szerint még mindig úton van.",
        "Előfizetésem meghosszabbításával kapcsolatban szeretnék érdeklődni.",
        "Mellékelten küldöm a képernyőképet és a számla másolatát.",
        "Kérem, jelezzék, ha további adatokra van szükségük.",
        "A tűzfal beállításait már ellenőriztük, azokkal nincs gond.",
        "Sürgős lenne, mert a hónap végéig le kell zárnunk a könyvelést.",
        "Két héttel ezelőtt már írtam Önöknek, de választ nem kaptam.",
        "Az ügyfélszámom: {cust}.",
        "Őszintén szólva eléggé csalódott vagyok a szolgáltatás minőségében.",
        "Köszönöm a gyors választ, sajnos a javasolt megoldás nem működött.",
        "Huszonöt felhasználónk függ ettől, bármilyen átmeneti megoldásnak örülnénk.",
        "Firefoxban, Chrome-ban és Safariban is kipróbáltam, mindig ugyanez az eredmény.",
        "A hiba hétfő reggel kilenc óta jelentkezik, nálunk semmi sem változott.",
    ],
}

GREETINGS = {
    "en": ["Hi,", "Hello support team,", "Dear Sir or Madam,", "Hi there,"],
    "de": ["Sehr geehrte Damen und Herren,", "Hallo Support-Team,", "Guten Tag,"],
    "hu": ["Tisztelt Ügyfélszolgálat!", "Kedves Ügyfélszolgálat!", "Jó napot kívánok!"],
}

CLOSINGS = {
    "en": ["Thanks in advance,\n{name}", "Best regards,\n{name}", "Kind regards\n{name}"],
    "de": [
        "Vielen Dank im Voraus!\n\nMit freundlichen Grüßen\n{name}",
        "Viele Grüße\n{name}",
        "Beste Grüße\n{name}",
    ],
    "hu": [
        "Köszönöm előre is a segítségüket!\n\nÜdvözlettel:\n{name}",
        "Tisztelettel:\n{name}",
        "Üdvözlettel,\n{name}",
    ],
}

FOLLOW_UPS = {
    "en": [
        "Any news on this? The problem is still there.",
        "Thanks, that worked! You can close the ticket.",
        "I'm sorry, but I still see the same error.",
        "Here is the additional information you asked for.",
    ],
    "de": [
        "Gibt es hierzu schon Neuigkeiten? Das Problem besteht weiterhin.",
        "Danke, das hat funktioniert! Sie können das Ticket schließen.",
        "Leider tritt der Fehler weiterhin auf.",
        "Anbei die gewünschten zusätzlichen Informationen.",
    ],
    "hu": [
        "Van esetleg valami újdonság? A probléma továbbra is fennáll.",
        "Köszönöm, működik! A bejelentést lezárhatják.",
        "Sajnos továbbra is ugyanazt a hibát látom.",
        "Küldöm a kért további információkat.",
    ],
}

SUPPORT_REPLY = {
    "en": "Dear {first},\n\nthank you for contacting us. We have received your request and "
    "opened ticket #{n}. A member of our team will get back to you shortly.\n\n"
    "Best regards,\nExample Support",
    "de": "Guten Tag {first},\n\nvielen Dank für Ihre Nachricht. Wir haben Ihre Anfrage unter "
    "Ticket #{n} erfasst und melden uns in Kürze bei Ihnen.\n\nFreundliche Grüße\n"
    "Ihr Example Kundenservice",
    "hu": "Kedves {first}!\n\nKöszönjük megkeresését. Bejelentését a(z) #{n} számú jegyen "
    "rögzítettük, kollégánk hamarosan felveszi Önnel a kapcsolatot.\n\nÜdvözlettel:\n"
    "Example Ügyfélszolgálat",
}

AUTO_SUBJECT = {
    "en": ["Automatic reply: {s}", "Out of Office: {s}"],
    "de": ["Automatische Antwort: {s}", "Abwesenheitsnotiz: {s}"],
    "hu": ["Automatikus válasz: {s}", "Házon kívül: {s}"],
}

AUTO_BODY = {
    "en": "Thank you for your message. I am out of the office until {until} with limited "
    "access to e-mail. For urgent matters please contact {colleague}.",
    "de": "Vielen Dank für Ihre Nachricht. Ich bin bis einschließlich {until} nicht im Büro "
    "und habe nur eingeschränkt Zugriff auf E-Mails. In dringenden Fällen wenden Sie sich "
    "bitte an {colleague}.",
    "hu": "Köszönöm levelét. {until}-ig szabadságon vagyok, e-mailjeimet csak korlátozottan "
    "olvasom. Sürgős ügyben kérem, forduljon kollégámhoz: {colleague}.",
}

REPLY_PREFIX = {"en": ["Re:", "RE:"], "de": ["AW:", "Re:", "AW:"], "hu": ["Vá:", "Re:", "Vá:"]}

IPHONE_SIG = {
    "en": "Sent from my iPhone",
    "de": "Von meinem iPhone gesendet",
    "hu": "iPhone-ról küldve",
}

NAMES = {
    "en": [
        "Emily Carter", "James O’Brien", "Priya Patel", "Chloé Martin", "Oliver Smith",
        "Sofia Rossi", "Daniel Kim", "Zoë Walker", "Liam Murphy", "Hannah Lee",
        "Noah Johnson", "Grace Thompson",
    ],
    "de": [
        "Jürgen Müller", "Sabine Weiß", "Björn Schäfer", "Anna Schröder", "Klaus Großmann",
        "Lena Köhler", "Martin Bauer", "Petra Hoffmann", "Uwe Krüger", "Sophie Wagner",
        "Jörg Fuß", "Katrin Möller",
    ],
    "hu": [
        "Kovács Ödön", "Szőke Erzsébet", "Nagy Gyöngyvér", "Fűzfa Zoltán", "Tőkés Anikó",
        "Horváth Bálint", "Kiss Réka", "Török Ferenc", "Molnár Ünige", "Varga Lőrinc",
        "Farkas Győző", "Balogh Tünde",
    ],
}  # fmt: skip

DOMAINS = {
    "en": ["gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com", "acme-corp.com",
           "northwind.io", "contoso.co.uk", "fastmail.fm"],
    "de": ["web.de", "gmx.de", "t-online.de", "gmail.com", "mueller-gmbh.de",
           "beispiel-ag.de", "icloud.com", "posteo.de"],
    "hu": ["freemail.hu", "citromail.hu", "gmail.com", "telekom.hu", "kovacs-kft.hu",
           "peldabt.hu", "icloud.com", "outlook.hu"],
}  # fmt: skip

LANG_WEIGHTS = (("en", 0.45), ("de", 0.30), ("hu", 0.25))
STYLE_WEIGHTS = (("gmail", 0.25), ("outlook", 0.40), ("apple", 0.10), ("thunderbird", 0.25))
TZ_BY_LANG = {"en": [0, 0, 1, -5, -8], "de": [1, 1, 1, 2], "hu": [1, 1, 2]}

ATTACH_KINDS = [
    # (content type, extension, magic, weight)
    ("application/pdf", "pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", 0.40),
    ("image/png", "png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 0.20),
    ("image/jpeg", "jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", 0.15),
    ("application/zip", "zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00", 0.10),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "xlsx",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00",
        0.15,
    ),
]

ATTACH_STEMS = {
    "en": ["invoice_{inv}", "screenshot", "error_log", "order_{order}", "statement March"],
    "de": ["Rechnung_{inv}", "Bildschirmfoto", "Fehlerprotokoll", "Bestellung_{order}",
           "Übersicht März"],
    "hu": ["számla_{inv}", "képernyőkép", "hibanapló", "rendelés_{order}", "kivonat március"],
}  # fmt: skip

OUTLOOK_HTML_HEAD = """<html xmlns:v="urn:schemas-microsoft-com:vml" \
xmlns:o="urn:schemas-microsoft-com:office:office" \
xmlns:w="urn:schemas-microsoft-com:office:word" \
xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" \
xmlns="http://www.w3.org/TR/REC-html40">
<head>
<meta http-equiv="Content-Type" content="text/html; charset={charset}">
<meta name="Generator" content="Microsoft Word 15 (filtered medium)">
<style><!--
/* Font Definitions */
@font-face
\t{{font-family:"Cambria Math";
\tpanose-1:2 4 5 3 5 4 6 3 2 4;}}
@font-face
\t{{font-family:Calibri;
\tpanose-1:2 15 5 2 2 2 4 3 2 4;}}
/* Style Definitions */
p.MsoNormal, li.MsoNormal, div.MsoNormal
\t{{margin:0cm;
\tfont-size:11.0pt;
\tfont-family:"Calibri",sans-serif;
\tmso-fareast-language:EN-US;}}
a:link, span.MsoHyperlink
\t{{mso-style-priority:99;
\tcolor:#0563C1;
\ttext-decoration:underline;}}
span.EmailStyle17
\t{{mso-style-type:personal-compose;
\tfont-family:"Calibri",sans-serif;
\tcolor:windowtext;}}
.MsoChpDefault
\t{{mso-style-type:export-only;
\tfont-family:"Calibri",sans-serif;
\tmso-fareast-language:EN-US;}}
@page WordSection1
\t{{size:612.0pt 792.0pt;
\tmargin:70.85pt 70.85pt 2.0cm 70.85pt;}}
div.WordSection1
\t{{page:WordSection1;}}
--></style><!--[if gte mso 9]><xml>
<o:shapedefaults v:ext="edit" spidmax="1026" />
</xml><![endif]--><!--[if gte mso 9]><xml>
<o:shapelayout v:ext="edit">
<o:idmap v:ext="edit" data="1" />
</o:shapelayout></xml><![endif]-->
</head>
<body lang="{lang_tag}" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">
<div class="WordSection1">
"""

LANG_TAG = {"en": "EN-GB", "de": "DE", "hu": "HU"}
CONTENT_LANG = {"en": "en-GB", "de": "de-DE", "hu": "hu-HU"}

# --------------------------------------------------------------------------- data model


@dataclass
class Customer:
    name: str
    addr: str
    lang: str
    style: str  # gmail | outlook | apple | thunderbird
    iphone: bool
    tz: timezone
    cust_no: str


@dataclass
class Body:
    paras: list[str]
    quote: Quoted | None = None


@dataclass
class Quoted:
    name: str
    addr: str
    to: str
    date: datetime
    subject: str
    body: Body


@dataclass
class Thread:
    ticket: int
    subject: str  # base subject, no prefix
    customer: Customer
    ids: list[str] = field(default_factory=list)
    last_paras: list[str] = field(default_factory=list)
    last_date: datetime | None = None
    thread_index: bytes = b""


@dataclass
class Sent:
    """A regular mail of the corpus that later mails can reply to."""

    msgid: str
    subject: str
    customer: Customer
    date: datetime
    thread: Thread


# --------------------------------------------------------------------------- helpers


def _ascii_fold(s: str) -> str:
    s = s.replace("ß", "ss").replace("’", "")
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")


def _first(c: Customer) -> str:
    parts = c.name.split()
    return parts[-1] if c.lang == "hu" else parts[0]


def _is_ascii(s: str) -> bool:
    return s.isascii()


def _encodes(s: str, charset: str) -> bool:
    try:
        s.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def _hdr(s: str, charset: str | Charset = "utf-8", name: str = "", words: bool = False) -> str:
    """An (encoded-word if needed) header value, folded at 76 columns.

    Gmail and Outlook encode the whole value once it has a non-ASCII character;
    with ``words`` only the runs of non-ASCII words are encoded (Apple Mail).
    """
    if _is_ascii(s):
        return s
    charset = _fits(s, charset)
    if not words:
        return Header(s, charset, header_name=name).encode(linesep="\n")
    h = Header(header_name=name)
    run: list[str] = []
    ascii_run: bool | None = None
    for w in s.split(" "):
        if ascii_run is not None and w.isascii() != ascii_run:
            h.append(" ".join(run), "us-ascii" if ascii_run else charset)
            run = []
        run.append(w)
        ascii_run = w.isascii()
    h.append(" ".join(run), "us-ascii" if ascii_run else charset)
    return h.encode(linesep="\n")


def _fits(s: str, charset: str | Charset) -> str | Charset:
    """``charset`` if it can encode ``s``, else UTF-8."""
    codec = charset if isinstance(charset, str) else str(charset.output_codec)
    return charset if _encodes(s, codec) else "utf-8"


def _addr(name: str, addr: str, charset: str | Charset = "utf-8") -> str:
    return formataddr((name, addr), _fits(name, charset))


def _fold_ids(ids: list[str]) -> str:
    return "\n ".join(ids)


def _b64_lines(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


def _fold_b64(data: bytes, first: int, width: int = 70) -> str:
    s = base64.b64encode(data).decode("ascii")
    out = [s[:first]]
    out += [s[i : i + width] for i in range(first, len(s), width)]
    return "\n\t ".join(out)


def _text_part(text: str, subtype: str, charset: str, cte: str, style: str) -> Message:
    part = Message()
    if style == "apple":
        part["Content-Type"] = f"text/{subtype};\n\tcharset={charset}"
    elif style == "thunderbird" and subtype == "plain":
        part["Content-Type"] = f"text/plain; charset={charset.upper()}; format=flowed"
    elif style == "gmail":
        part["Content-Type"] = f'text/{subtype}; charset="{charset.upper()}"'
    else:
        part["Content-Type"] = f'text/{subtype}; charset="{charset}"'
    data = text.encode(charset)
    if cte == "base64":
        payload = _b64_lines(data)
    elif cte == "quoted-printable":
        payload = quopri.encodestring(data).decode("ascii")
    else:  # 7bit / 8bit: raw bytes, written back verbatim by BytesGenerator
        payload = data.decode("ascii", "surrogateescape")
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)
    return part


def _multipart(subtype: str, boundary: str, parts: list[Message], **params: str) -> Message:
    m = Message()
    extra = "".join(f'; {k}="{v}"' for k, v in params.items())
    m["Content-Type"] = f'multipart/{subtype};\n\tboundary="{boundary}"{extra}'
    for p in parts:
        m.attach(p)
    return m


def _copy_headers(dst: Message, src: Message) -> None:
    for k, v in src.items():
        dst[k] = v


def _adopt_payload(dst: Message, src: Message) -> None:
    # get_payload() would decode an 8bit payload; take the raw one over instead.
    dst._payload = src._payload  # type: ignore[attr-defined]
    dst.preamble = src.preamble


# --------------------------------------------------------------------------- the generator


class CorpusGenerator:
    def __init__(self, seed: int, count: int) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.now = datetime(2024, 3, 4, 7, 30, tzinfo=UTC)
        self.used_ids: set[str] = set()
        self.threads: list[Thread] = []
        self.sent: list[Sent] = []
        self.stats: Counter[str] = Counter()
        self.customers = self._make_customers(240)
        self.kinds = self._schedule(count)
        regular = [i for i, k in enumerate(self.kinds) if k in ("new", "reply")]
        n_att = min(len(regular), round(SHARE_ATTACH * count))
        self.attach_at = set(self.rng.sample(regular, n_att))

    # ---- setup

    def _make_customers(self, n: int) -> list[Customer]:
        rng = self.rng
        out: list[Customer] = []
        seen: set[str] = set()
        while len(out) < n:
            lang = self._weighted(LANG_WEIGHTS)
            name = rng.choice(NAMES[lang])
            domain = rng.choice(DOMAINS[lang])
            first, last = name.split(" ", 1)
            if lang == "hu":  # family name first
                first, last = last, first
            local = _ascii_fold(f"{first}.{last}".lower()).replace(" ", "")
            if rng.random() < 0.4:
                local += str(rng.randint(1, 99))
            addr = f"{local}@{domain}"
            if addr in seen:
                continue
            seen.add(addr)
            if domain == "gmail.com":
                style = "gmail"
            elif domain in ("outlook.com", "outlook.hu"):
                style = "outlook"
            elif domain == "icloud.com":
                style = "apple"
            else:
                style = self._weighted(STYLE_WEIGHTS)
            tz = timezone(timedelta(hours=rng.choice(TZ_BY_LANG[lang])))
            out.append(
                Customer(
                    name=name,
                    addr=addr,
                    lang=lang,
                    style=style,
                    iphone=style == "apple" and rng.random() < 0.4,
                    tz=tz,
                    cust_no=f"K-{rng.randint(100000, 999999)}",
                )
            )
        return out

    def _schedule(self, count: int) -> list[str]:
        n_bounce = round(SHARE_BOUNCE * count)
        n_auto = round(SHARE_AUTO * count)
        rest = count - n_bounce - n_auto
        n_reply = round(SHARE_REPLY_OF_REGULAR * rest)
        kinds = ["bounce"] * n_bounce + ["auto"] * n_auto + ["reply"] * n_reply
        kinds += ["new"] * (count - len(kinds))
        self.rng.shuffle(kinds)
        if kinds and kinds[0] != "new":  # the first mail cannot reply to anything
            j = kinds.index("new")
            kinds[0], kinds[j] = kinds[j], kinds[0]
        return kinds

    def _weighted(self, pairs: tuple[tuple[str, float], ...]) -> str:
        r = self.rng.random() * sum(w for _, w in pairs)
        for v, w in pairs:
            r -= w
            if r < 0:
                return v
        return pairs[-1][0]

    # ---- small random things

    def _hex(self, n: int) -> str:
        return self.rng.randbytes((n + 1) // 2).hex()[:n]

    def _alnum(self, n: int, alphabet: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _advance(self) -> datetime:
        self.now += timedelta(seconds=max(5, int(self.rng.expovariate(1 / 420))))
        return self.now

    def _msgid(self, style: str, domain: str) -> str:
        while True:
            if style == "gmail":
                alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_-="
                mid = f"<CA{self._alnum(self.rng.randint(44, 60), alpha)}@mail.gmail.com>"
            elif style == "outlook":
                srv = f"{self.rng.choice(['AM0PR04', 'DB9PR08', 'VI1PR03', 'PAXPR10'])}MB"
                srv += str(self.rng.randint(1000, 9999))
                mid = f"<{srv}{self._alnum(24)}@{srv}.eurprd0{self.rng.randint(1, 9)}"
                mid += ".prod.outlook.com>"
            elif style == "apple":
                mid = f"<{str(self._uuid()).upper()}@{domain}>"
            elif style == "thunderbird":
                mid = f"<{self._uuid()}@{domain}>"
            else:  # MTA / support side
                mid = f"<{self.now.strftime('%Y%m%d%H%M%S')}.{self._alnum(12)}@{domain}>"
            if mid not in self.used_ids:
                self.used_ids.add(mid)
                return mid

    def _fill(self, s: str) -> str:
        rng = self.rng
        return s.format(
            inv=f"RE-{rng.randint(2023, 2024)}-{rng.randint(10000, 99999)}",
            order=f"{rng.randint(100000000, 999999999)}",
            cust="{cust}",
        )

    # ---- bodies

    def _new_paras(self, c: Customer, n_sent: tuple[int, int] = (2, 7)) -> list[str]:
        rng = self.rng
        lang = c.lang
        sents = rng.sample(SENTENCES[lang], rng.randint(*n_sent))
        sents = [self._fill(s).replace("{cust}", c.cust_no) for s in sents]
        paras = [rng.choice(GREETINGS[lang])]
        while sents:
            k = rng.randint(1, 3)
            paras.append(" ".join(sents[:k]))
            sents = sents[k:]
        paras.append(rng.choice(CLOSINGS[lang]).format(name=c.name))
        return paras

    def _follow_paras(self, c: Customer) -> list[str]:
        rng = self.rng
        paras = [rng.choice(GREETINGS[c.lang]), rng.choice(FOLLOW_UPS[c.lang])]
        if rng.random() < 0.5:
            paras.append(self._fill(rng.choice(SENTENCES[c.lang])).replace("{cust}", c.cust_no))
        paras.append(rng.choice(CLOSINGS[c.lang]).format(name=c.name))
        return paras

    def _signature(self, c: Customer) -> str | None:
        if c.iphone:
            return IPHONE_SIG[c.lang]
        if c.style == "outlook" and not c.addr.split("@")[1].startswith("outlook"):
            dom = c.addr.split("@")[1]
            return (
                f"{c.name}\n{self.rng.choice(['Accounting', 'IT', 'Purchasing', 'Sales'])}\n"
                f"{dom.split('.')[0].replace('-', ' ').title()}\n"
                f"Tel. +{self.rng.randint(30, 49)} {self.rng.randint(100, 999)} "
                f"{self.rng.randint(1000000, 9999999)}\nwww.{dom}"
            )
        if c.style == "gmail" and self.rng.random() < 0.3:
            return f"-- \n{c.name}"
        return None

    def _attribution(self, style: str, lang: str, name: str, addr: str, d: datetime) -> str:
        months_hu = ["jan.", "febr.", "márc.", "ápr.", "máj.", "jún.", "júl.", "aug.",
                     "szept.", "okt.", "nov.", "dec."]  # fmt: skip
        days_hu = ["H", "K", "Sze", "Cs", "P", "Szo", "V"]
        hm = d.strftime("%H:%M")
        if lang == "de":
            if style == "thunderbird":
                return f"Am {d:%d.%m.%y} um {hm} schrieb {name}:"
            return f"Am {d:%d.%m.%Y} um {hm} schrieb {name} <{addr}>:"
        if lang == "hu":
            mon = months_hu[d.month - 1]
            if style == "gmail":
                return (
                    f"{name} <{addr}> ezt írta (időpont: {d.year}. {mon} {d.day}., "
                    f"{days_hu[d.weekday()]}, {hm}):"
                )
            if style == "apple":
                return f"{d.year}. {mon} {d.day}. dátummal, {hm} időpontban {name} <{addr}> írta:"
            return f"{d:%Y. %m. %d.} {hm} keltezéssel, {name} írta:"
        if style == "gmail":
            return f"On {d:%a}, {d.day} {d:%b %Y} at {hm}, {name} <{addr}> wrote:"
        if style == "apple":
            return f"On {d.day} {d:%b %Y}, at {hm}, {name} <{addr}> wrote:"
        return f"On {d:%d/%m/%Y} {hm}, {name} wrote:"

    def _outlook_block(self, lang: str, q: Quoted) -> list[str]:
        labels = {
            "en": ("From", "Sent", "To", "Subject"),
            "de": ("Von", "Gesendet", "An", "Betreff"),
            "hu": ("Feladó", "Elküldve", "Címzett", "Tárgy"),
        }[lang]
        return [
            f"{labels[0]}: {q.name} <{q.addr}>",
            f"{labels[1]}: {format_datetime(q.date)}",
            f"{labels[2]}: {q.to}",
            f"{labels[3]}: {q.subject}",
        ]

    def _render_text(self, b: Body, style: str, lang: str) -> str:
        out = "\n\n".join(b.paras)
        q = b.quote
        if q is None:
            return out + "\n"
        inner = self._render_text(q.body, style, lang).rstrip("\n")
        if style == "outlook":
            head = "\n".join(self._outlook_block(lang, q))
            return f"{out}\n\n________________________________\n{head}\n\n{inner}\n"
        attr = self._attribution(style, lang, q.name, q.addr, q.date)
        quoted = "\n".join(">" + (" " + ln if ln and not ln.startswith(">") else ln)
                           for ln in inner.split("\n"))  # fmt: skip
        return f"{out}\n\n{attr}\n\n{quoted}\n"

    def _render_html_inner(self, b: Body, style: str, lang: str) -> str:
        def para(p: str) -> str:
            t = html.escape(p, quote=False).replace("\n", "<br>\n")
            if style == "outlook":
                return (
                    f'<p class="MsoNormal">{t}<o:p></o:p></p>\n'
                    '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
                )
            return f"<div>{t}</div><div><br></div>\n"

        out = "".join(para(p) for p in b.paras)
        q = b.quote
        if q is None:
            return out
        inner = self._render_html_inner(q.body, style, lang)
        if style == "outlook":
            head = "<br>\n".join(html.escape(ln) for ln in self._outlook_block(lang, q))
            return (
                f'{out}<div id="appendonsend"></div>\n<hr style="display:inline-block;width:98%" '
                f'tabindex="-1">\n<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, '
                f'sans-serif" style="font-size:11pt" color="#000000">{head}</font>'
                f"<div>&nbsp;</div></div>\n<div>{inner}</div>\n"
            )
        attr = html.escape(self._attribution(style, lang, q.name, q.addr, q.date))
        if style == "gmail":
            return (
                f'{out}<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">{attr}'
                f'<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
                f'border-left:1px solid rgb(204,204,204);padding-left:1ex">\n{inner}'
                f"</blockquote></div>\n"
            )
        return (
            f'{out}<div><br><blockquote type="cite"><div>{attr}</div><br>\n{inner}'
            f"</blockquote></div>\n"
        )

    def _render_html(
        self, b: Body, style: str, lang: str, charset: str, logo_cid: str | None
    ) -> str:
        inner = self._render_html_inner(b, style, lang)
        if logo_cid:
            inner = inner.replace(
                "<o:p></o:p></p>",
                f'<o:p></o:p></p>\n<p class="MsoNormal"><img width="120" height="40" '
                f'id="Picture_x0020_1" src="cid:{logo_cid}" alt="logo"></p>',
                1,
            )
        if style == "outlook":
            head = OUTLOOK_HTML_HEAD.format(charset=charset, lang_tag=LANG_TAG[lang])
            return f"{head}{inner}</div>\n</body>\n</html>\n"
        if style == "gmail":
            return f'<div dir="ltr">{inner}</div>\n'
        return (
            f'<html><head><meta http-equiv="content-type" content="text/html; '
            f'charset={charset}"></head><body style="overflow-wrap: break-word;">'
            f"\n{inner}</body></html>\n"
        )

    # ---- encoding choices

    def _charset_for(self, c: Customer, texts: list[str]) -> str:
        rng = self.rng
        if c.style == "outlook":
            cs = "iso-8859-2" if c.lang == "hu" else "windows-1252"
            if rng.random() < 0.25:
                cs = "utf-8"
        elif c.style == "gmail":
            cs = "iso-8859-2" if c.lang == "hu" and rng.random() < 0.3 else "utf-8"
        elif c.style == "thunderbird":
            cs = rng.choice(["iso-8859-2", "utf-8"]) if c.lang == "hu" else "utf-8"
        else:
            cs = "utf-8"
        if not all(_encodes(t, cs) for t in texts):
            cs = "utf-8"
        return cs

    def _cte_for(self, style: str, data_ascii: bool) -> str:
        if data_ascii:
            return "7bit"
        r = self.rng.random()
        if style == "gmail":
            return "quoted-printable" if r < 0.7 else "base64"
        if style == "outlook":
            return "quoted-printable" if r < 0.75 else "base64"
        if style == "apple":
            return "quoted-printable" if r < 0.6 else "8bit"
        return "8bit" if r < 0.8 else "quoted-printable"

    # ---- attachments

    def _attachment_size(self) -> int:
        rng = self.rng
        if rng.random() < 0.05:
            return rng.randint(300 * 1024, 3 * 1024 * 1024)
        return rng.randint(10 * 1024, 300 * 1024)

    def _attachment(self, c: Customer) -> Message:
        rng = self.rng
        ctype, ext, magic, _ = rng.choices(ATTACH_KINDS, weights=[k[3] for k in ATTACH_KINDS])[0]
        size = self._attachment_size()
        data = magic + rng.randbytes(max(0, size - len(magic)))
        stem = self._fill(rng.choice(ATTACH_STEMS[c.lang]))
        fname = f"{stem}.{ext}"
        part = Message()
        if _is_ascii(fname):
            part["Content-Type"] = f'{ctype}; name="{fname}"'
            disp = f'attachment; filename="{fname}"'
        elif c.style in ("gmail", "outlook"):  # encoded-word in a parameter: common practice
            enc = Header(fname, "utf-8").encode()
            part["Content-Type"] = f'{ctype}; name="{enc}"'
            disp = f'attachment; filename="{enc}"'
        else:  # RFC 2231
            enc = "utf-8''" + quote(fname.encode("utf-8"))
            part["Content-Type"] = f"{ctype};\n\tname*={enc}"
            disp = f"attachment;\n\tfilename*={enc}"
        if c.style == "outlook":
            ds = format_datetime(self.now)
            disp += f';\n\tsize={size};\n\tcreation-date="{ds}";\n\tmodification-date="{ds}"'
        part["Content-Disposition"] = disp
        part["Content-Transfer-Encoding"] = "base64"
        if c.style == "gmail":
            part["Content-ID"] = f"<f_{self._alnum(9, 'abcdefghijklmnopqrstuvwxyz0123456789')}0>"
            part["X-Attachment-Id"] = part["Content-ID"].strip("<>")
        part.set_payload(_b64_lines(data))
        self.stats["attachments"] += 1
        self.stats["attachment_bytes"] += size
        self.stats[f"attachment_type:{ext}"] += 1
        if size > 1024 * 1024:
            self.stats["attachments_over_1MB"] += 1
        return part

    def _logo(self) -> tuple[str, Message]:
        rng = self.rng
        cid = f"image001.png@01DA{self._hex(4).upper()}.{self._hex(8).upper()}"
        data = ATTACH_KINDS[1][2] + rng.randbytes(rng.randint(3000, 12000))
        part = Message()
        part["Content-Type"] = 'image/png; name="image001.png"'
        part["Content-Description"] = "image001.png"
        part["Content-Disposition"] = f'inline; filename="image001.png"; size={len(data)}'
        part["Content-ID"] = f"<{cid}>"
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(_b64_lines(data))
        self.stats["inline_images"] += 1
        return cid, part

    # ---- transport headers

    def _received(self, m: Message, c: Customer, d: datetime) -> None:
        rng = self.rng
        d_mx = d + timedelta(seconds=rng.randint(1, 20))
        qid = self._alnum(12, "BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789")
        m["Return-Path"] = f"<{c.addr}>"
        m["Delivered-To"] = SUPPORT_ADDR
        dom = c.addr.split("@")[1]
        if c.style == "gmail":
            n = rng.randint(41, 53)
            host, ip = f"mail-ej1-f{n}.google.com", f"209.85.218.{n}"
        elif c.style == "outlook":
            n = rng.randint(2010, 2099)
            host = f"mail-am6eur05on{n}.outbound.protection.outlook.com"
            ip = f"40.107.22.{n % 250}"
        else:
            host, ip = (
                f"smtp.{dom}",
                f"{rng.randint(80, 212)}.{rng.randint(0, 255)}.1.{rng.randint(2, 250)}",
            )
        m["Received"] = (
            f"from {host} ({host} [{ip}])\n\tby {MX} (Postfix) with ESMTPS id {qid}\n"
            f"\tfor <{SUPPORT_ADDR}>; {format_datetime(d_mx.astimezone(CET))}"
        )
        if c.style == "outlook":
            srv = f"AM0PR04MB{rng.randint(1000, 9999)}.eurprd04.prod.outlook.com"
            m["Received"] = (
                f"from {srv} ([fe80::{self._hex(4)}:{self._hex(4)}:{self._hex(4)}:{self._hex(4)}])"
                f"\n by {srv}\n ([fe80::{self._hex(4)}:{self._hex(4)}%4]) with mapi id "
                f"15.20.7362.019; {format_datetime(d.astimezone(UTC))}"
            )
        elif c.style == "gmail":
            m["Received"] = (
                f"by {host} with SMTP id {self._alnum(14, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
                f"\n        for <{SUPPORT_ADDR}>; {format_datetime(d.astimezone(PST))}"
            )
        if c.style in ("gmail", "outlook") or rng.random() < 0.5:
            sel = {"gmail": "20230601", "outlook": "selector1"}.get(c.style, "mail")
            m["DKIM-Signature"] = (
                f"v=1; a=rsa-sha256; c=relaxed/relaxed;\n\td={dom}; s={sel}; "
                f"t={int(d.timestamp())};\n\th=from:to:subject:date:message-id:mime-version;\n"
                f"\tbh={base64.b64encode(rng.randbytes(32)).decode()};\n"
                f"\tb={_fold_b64(rng.randbytes(256), 60)}"
            )

    # ---- mail kinds

    def next_mail(self, index: int) -> bytes:
        kind = self.kinds[index]
        self.stats[f"kind:{kind}"] += 1
        if kind == "bounce":
            m = self._bounce()
        elif kind == "auto":
            m = self._auto_reply()
        else:
            m = self._regular(kind, index in self.attach_at)
        buf = io.BytesIO()
        BytesGenerator(buf, policy=_GEN_POLICY).flatten(m)
        raw = buf.getvalue()
        self.stats["bytes"] += len(raw)
        return raw

    def _pick_thread(self) -> Thread:
        back = min(len(self.threads) - 1, int(self.rng.expovariate(1 / 25)))
        return self.threads[len(self.threads) - 1 - back]

    def _regular(self, kind: str, with_attach: bool) -> Message:
        rng = self.rng
        d = self._advance()
        if kind == "new":
            c = rng.choice(self.customers)
            subject = self._fill(rng.choice(SUBJECTS[c.lang]))
            th = Thread(ticket=len(self.threads) + 1, subject=subject, customer=c)
            self.threads.append(th)
            body = Body(self._new_paras(c))
            full_subject = subject
        else:
            th = self._pick_thread()
            c = th.customer
            assert th.last_date is not None
            tagged = rng.random() < 0.5
            prefix = rng.choice(REPLY_PREFIX[c.lang] if c.style == "outlook" else ["Re:"])
            if c.lang == "hu" and c.style != "outlook" and rng.random() < 0.3:
                prefix = "Vá:"
            if c.lang == "de" and c.style == "thunderbird" and rng.random() < 0.5:
                prefix = "AW:"
            base = f"[#{th.ticket}] {th.subject}" if tagged else th.subject
            full_subject = f"{prefix} {base}"
            self.stats["reply:tagged"] += int(tagged)
            self.stats[f"reply_prefix:{prefix}"] += 1
            prev = Body(list(th.last_paras))
            prev_q = Quoted(c.name, c.addr, SUPPORT_ADDR, th.last_date, th.subject, prev)
            if tagged:  # the customer answers the support's acknowledgement
                span = max(60, int((d - th.last_date).total_seconds()))
                sd = th.last_date + timedelta(seconds=rng.randint(30, span - 20))
                ack = SUPPORT_REPLY[c.lang].format(first=_first(c), n=th.ticket)
                sup = Body(ack.split("\n\n"), quote=prev_q)
                q = Quoted(
                    SUPPORT_NAME[c.lang], SUPPORT_ADDR, f"{c.name} <{c.addr}>", sd,
                    f"Re: [#{th.ticket}] {th.subject}", sup,
                )  # fmt: skip
            else:  # follow-up to one's own earlier mail
                q = prev_q
            body = Body(self._follow_paras(c), quote=q)

        sig = self._signature(c)
        if sig:
            body.paras.append(sig)
        style = c.style
        html_only = rng.random() < SHARE_HTML_ONLY
        logo_cid, logo = (None, None)
        if style == "outlook" and not html_only and sig and "\n" in sig and rng.random() < 0.3:
            logo_cid, logo = self._logo()

        text = self._render_text(body, style, c.lang)
        charset = self._charset_for(c, [text, full_subject, c.name])
        if style == "gmail":
            alt = not c.iphone
        elif style == "outlook":
            alt = True
        elif style == "apple":
            alt = rng.random() < 0.35
        else:
            alt = rng.random() < 0.2
        alt = alt or html_only
        html_text = self._render_html(body, style, c.lang, charset, logo_cid) if alt else ""
        cte = self._cte_for(style, text.isascii())
        self.stats[f"charset:{charset}"] += 1
        self.stats[f"cte:{cte}"] += 1
        self.stats[f"style:{style}{'-iphone' if c.iphone else ''}"] += 1
        self.stats[f"lang:{c.lang}"] += 1

        if html_only:
            self.stats["html_only"] += 1
            content = _text_part(html_text, "html", charset, cte, style)
        elif alt:
            self.stats["html_alternative"] += 1
            hcte = cte if cte != "7bit" else "quoted-printable"
            plain = _text_part(text, "plain", charset, cte, style)
            htmlp = _text_part(html_text, "html", charset, hcte, style)
            content = _multipart("alternative", self._boundary(style), [plain, htmlp])
        else:
            content = _text_part(text, "plain", charset, cte, style)
        if logo is not None:
            content = _multipart(
                "related", self._boundary(style), [content, logo], type="multipart/alternative"
            )
        if with_attach:
            self.stats["with_attachments"] += 1
            n = 1 if rng.random() < 0.75 else (2 if rng.random() < 0.8 else 3)
            parts = [content] + [self._attachment(c) for _ in range(n)]
            content = _multipart("mixed", self._boundary(style), parts)
            if style == "thunderbird":
                content.preamble = "This is a multi-part message in MIME format."

        msgid = self._msgid(style, c.addr.split("@")[1])
        m = Message()
        self._received(m, c, d)
        refs = th.ids[-12:]
        cs_hdr: str | Charset = charset
        if style in ("apple", "thunderbird"):
            cs_hdr = Charset(charset)
            cs_hdr.header_encoding = QP
        subj = _hdr(full_subject, cs_hdr, "Subject", words=style in ("apple", "thunderbird"))
        from_ = _addr(c.name, c.addr, cs_hdr)
        date = format_datetime(d.astimezone(c.tz))
        cc = None
        if rng.random() < 0.08:
            colleague = rng.choice(self.customers)
            cc = _addr(colleague.name, colleague.addr, cs_hdr)

        if style == "outlook":
            m["From"] = from_
            m["To"] = f'"{SUPPORT_ADDR}" <{SUPPORT_ADDR}>'
            if cc:
                m["CC"] = cc
            m["Subject"] = subj
            m["Thread-Topic"] = _hdr(th.subject, cs_hdr, "Thread-Topic")
            if not th.thread_index:
                th.thread_index = rng.randbytes(22)
            else:
                th.thread_index += rng.randbytes(5)
            m["Thread-Index"] = base64.b64encode(th.thread_index).decode()
            m["Date"] = date
            m["Message-ID"] = msgid
            if refs:
                m["References"] = _fold_ids(refs)
                m["In-Reply-To"] = refs[-1]
            m["Accept-Language"] = f"{CONTENT_LANG[c.lang]}, en-US"
            m["Content-Language"] = CONTENT_LANG[c.lang]
            m["X-MS-Has-Attach"] = "yes" if with_attach or logo is not None else ""
            m["X-MS-TNEF-Correlator"] = ""
            m["x-ms-publictraffictype"] = "Email"
            m["x-ms-exchange-organization-scl"] = "1"
            _copy_headers(m, content)
            m["MIME-Version"] = "1.0"
        elif style == "gmail":
            m["MIME-Version"] = "1.0"
            if refs:
                m["References"] = _fold_ids(refs)
                m["In-Reply-To"] = refs[-1]
            m["From"] = from_
            m["Date"] = date
            m["Message-ID"] = msgid
            m["Subject"] = subj
            m["To"] = SUPPORT_ADDR
            if cc:
                m["Cc"] = cc
            _copy_headers(m, content)
        elif style == "apple":
            m["From"] = from_
            _copy_headers(m, content)
            m["Mime-Version"] = (
                "1.0 (1.0)" if c.iphone else "1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))"
            )
            m["Subject"] = subj
            m["Message-Id"] = msgid
            if refs:
                m["References"] = _fold_ids(refs)
                m["In-Reply-To"] = refs[-1]
            m["Date"] = date
            m["To"] = SUPPORT_ADDR
            if cc:
                m["Cc"] = cc
            m["X-Mailer"] = "iPhone Mail (21D61)" if c.iphone else "Apple Mail (2.3774.600.62)"
        else:
            m["Message-ID"] = msgid
            m["Date"] = date
            m["MIME-Version"] = "1.0"
            m["User-Agent"] = "Mozilla Thunderbird"
            if refs:
                m["References"] = _fold_ids(refs)
                m["In-Reply-To"] = refs[-1]
            m["Content-Language"] = CONTENT_LANG[c.lang]
            m["To"] = SUPPORT_ADDR
            if cc:
                m["Cc"] = cc
            m["From"] = from_
            m["Subject"] = subj
            _copy_headers(m, content)
        _adopt_payload(m, content)

        th.ids.append(msgid)
        th.last_paras = [p for p in body.paras if p != sig]
        th.last_date = d
        self.sent.append(Sent(msgid, full_subject, c, d, th))
        if refs:
            self.stats["with_references"] += 1
        return m

    def _boundary(self, style: str) -> str:
        if style == "gmail":
            return "0000000000" + self._hex(18)
        if style == "outlook":
            n = self.rng.randint(1000, 9999)
            return f"_00{self.rng.randint(0, 9)}_AM0PR04MB{n}{self._alnum(20)}_"
        if style == "apple":
            return f"Apple-Mail=_{str(self._uuid()).upper()}"
        return f"------------{self._alnum(24)}"

    def _auto_reply(self) -> Message:
        rng = self.rng
        d = self._advance()
        orig = self.sent[len(self.sent) - 1 - min(len(self.sent) - 1, int(rng.expovariate(1 / 15)))]
        c = orig.customer
        lang = c.lang
        outlook = c.style == "outlook" or rng.random() < 0.5
        subj = rng.choice(AUTO_SUBJECT[lang]).format(s=orig.subject)
        until = (d + timedelta(days=rng.randint(2, 14))).strftime("%d.%m.%Y")
        colleague = rng.choice(self.customers)
        text = (
            AUTO_BODY[lang].format(until=until, colleague=colleague.addr) + "\n\n" + c.name + "\n"
        )
        cs = "utf-8" if not outlook else ("iso-8859-2" if lang == "hu" else "windows-1252")
        if not (_encodes(text, cs) and _encodes(subj, cs)):
            cs = "utf-8"
        cte = "7bit" if text.isascii() else ("quoted-printable" if outlook else "base64")
        style = "outlook" if outlook else "gmail"
        m = Message()
        self._received(m, Customer(c.name, c.addr, lang, style, False, c.tz, c.cust_no), d)
        m["From"] = _addr(c.name, c.addr, cs)
        m["To"] = SUPPORT_ADDR
        m["Subject"] = _hdr(subj, cs, "Subject")
        m["Date"] = format_datetime(d.astimezone(c.tz))
        m["Message-ID"] = self._msgid(style, c.addr.split("@")[1])
        m["In-Reply-To"] = orig.msgid
        m["References"] = orig.msgid
        m["Auto-Submitted"] = "auto-replied"
        if outlook:
            m["Thread-Topic"] = _hdr(orig.thread.subject, cs, "Thread-Topic")
            m["X-MS-Has-Attach"] = ""
            m["X-Auto-Response-Suppress"] = "All"
            m["X-MS-Exchange-Inbox-Rules-Loop"] = c.addr
            m["Content-Language"] = CONTENT_LANG[lang]
        else:
            m["Precedence"] = "bulk"
            m["X-Autoreply"] = "yes"
        m["MIME-Version"] = "1.0"
        part = _text_part(text, "plain", cs, cte, style)
        _copy_headers(m, part)
        _adopt_payload(m, part)
        self.stats[f"charset:{cs}"] += 1
        self.stats[f"cte:{cte}"] += 1
        return m

    def _bounce(self) -> Message:
        rng = self.rng
        d = self._advance()
        th = self._pick_thread()
        c = th.customer
        local, dom = c.addr.split("@")
        rcpt = f"{local[:-1]}{local[-1] * 2}@{dom}" if rng.random() < 0.6 else c.addr
        status, diag = rng.choice(
            [
                ("5.1.1", f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown"),
                ("5.2.2", f"552 5.2.2 <{rcpt}>: Mailbox full"),
                ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering"),
                ("4.4.1", f"connect to mx.{dom}[203.0.113.{rng.randint(1, 254)}]:25: timed out"),
            ]
        )
        action = "delayed" if status.startswith("4") else "failed"
        qid = self._alnum(10, "0123456789ABCDEF")
        boundary = f"{qid}.{int(d.timestamp())}/{MX}"
        sent_at = d - timedelta(seconds=rng.randint(2, 600))
        d_cet = d.astimezone(CET)

        # the support's outbound mail that bounced (a reply on the ticket)
        orig = Message()
        orig["Return-Path"] = f"<{SUPPORT_ADDR}>"
        orig["Received"] = (
            f"from maild.example.com (maild.example.com [10.0.0.5])\n\tby {MX} (Postfix) "
            f"with ESMTP id {qid}\n\tfor <{rcpt}>; {format_datetime(sent_at)}"
        )
        orig["From"] = _addr(SUPPORT_NAME[c.lang], SUPPORT_ADDR)
        orig["To"] = _addr(c.name, rcpt)
        orig["Subject"] = _hdr(f"Re: [#{th.ticket}] {th.subject}", "utf-8", "Subject")
        orig["Date"] = format_datetime(sent_at)
        orig["Message-ID"] = self._msgid("mta", "example.com")
        if th.ids:
            orig["In-Reply-To"] = th.ids[-1]
            orig["References"] = _fold_ids(th.ids[-12:])
        orig["MIME-Version"] = "1.0"
        ack = SUPPORT_REPLY[c.lang].format(first=_first(c), n=th.ticket) + "\n"
        p = _text_part(
            ack, "plain", "utf-8", "quoted-printable" if not ack.isascii() else "7bit", ""
        )
        _copy_headers(orig, p)
        _adopt_payload(orig, p)

        notice = Message()
        notice["Content-Description"] = "Notification"
        notice["Content-Type"] = "text/plain; charset=us-ascii"
        notice.set_payload(
            f"This is the mail system at host {MX}.\n\n"
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n\n"
            "For further assistance, please send mail to postmaster.\n\n"
            "If you do so, please include this problem report. You can\n"
            "delete your own text from the attached returned message.\n\n"
            "                   The mail system\n\n"
            f"<{rcpt}>: host mx.{dom}[203.0.113.7] said: {diag} (in reply to RCPT TO command)\n"
        )

        per_msg = Message()
        per_msg["Reporting-MTA"] = f"dns; {MX}"
        per_msg["X-Postfix-Queue-ID"] = qid
        per_msg["X-Postfix-Sender"] = f"rfc822; {SUPPORT_ADDR}"
        per_msg["Arrival-Date"] = format_datetime(sent_at)
        per_rcpt = Message()
        per_rcpt["Final-Recipient"] = f"rfc822; {rcpt}"
        per_rcpt["Original-Recipient"] = f"rfc822;{rcpt}"
        per_rcpt["Action"] = action
        per_rcpt["Status"] = status
        per_rcpt["Remote-MTA"] = f"dns; mx.{dom}"
        per_rcpt["Diagnostic-Code"] = f"smtp; {diag}"
        ds = Message()
        ds["Content-Description"] = "Delivery report"
        ds["Content-Type"] = "message/delivery-status"
        ds.set_payload([per_msg, per_rcpt])

        ret = Message()
        ret["Content-Description"] = "Undelivered Message"
        ret["Content-Type"] = "message/rfc822"
        ret["Content-Transfer-Encoding"] = "8bit"
        ret.set_payload([orig])

        m = Message()
        m["Return-Path"] = "<>"
        m["Delivered-To"] = SUPPORT_ADDR
        mx_id = self._alnum(10, "0123456789ABCDEF")
        m["Received"] = f"by {MX} (Postfix)\n\tid {mx_id}; {format_datetime(d_cet)}"
        m["Date"] = format_datetime(d_cet)
        m["From"] = f"MAILER-DAEMON@{MX} (Mail Delivery System)"
        m["Subject"] = (
            "Undelivered Mail Returned to Sender"
            if action == "failed"
            else "Delayed Mail (still being retried)"
        )
        m["To"] = SUPPORT_ADDR
        m["Auto-Submitted"] = "auto-replied"
        m["MIME-Version"] = "1.0"
        m["Content-Type"] = (
            f'multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"'
        )
        m["Content-Transfer-Encoding"] = "8bit"
        m["Message-Id"] = self._msgid("mta", MX)
        m.preamble = "This is a MIME-encapsulated message."
        for part in (notice, ds, ret):
            m.attach(part)
        self.stats[f"bounce_action:{action}"] += 1
        return m


# --------------------------------------------------------------------------- public API


def generate(
    dest: Path, count: int = 2000, seed: int = 1, *, stats: Counter[str] | None = None
) -> list[Path]:
    """Write ``count`` ``.eml`` files (``00001.eml`` ...) into ``dest``, one by one.

    ``stats``, if given, is updated with the mix counts (``kind:*``, ``style:*``,
    ``charset:*``, ``cte:*``, ``attachments``, ``bytes`` ...).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    gen = CorpusGenerator(seed, count)
    width = max(5, len(str(count)))
    paths = []
    for i in range(count):
        p = dest / f"{i + 1:0{width}d}.eml"
        p.write_bytes(gen.next_mail(i))
        paths.append(p)
    if stats is not None:
        stats.update(gen.stats)
    return paths


def format_stats(stats: Counter[str]) -> str:
    """A human-readable summary of the mix counts."""
    groups: dict[str, list[str]] = {}
    singles = []
    for key in sorted(stats):
        if ":" in key:
            g, v = key.split(":", 1)
            groups.setdefault(g, []).append(f"{v}={stats[key]}")
        elif key not in ("bytes", "attachment_bytes"):
            singles.append(f"{key}={stats[key]}")
    lines = [f"  {g:<14} {', '.join(vs)}" for g, vs in groups.items()]
    lines.append(f"  {'other':<14} {', '.join(singles)}")
    lines.append(
        f"  {'size':<14} total={stats['bytes'] / 1e6:.1f} MB, "
        f"attachment payload={stats['attachment_bytes'] / 1e6:.1f} MB"
    )
    return "\n".join(lines)


def check(paths: list[Path]) -> list[str]:
    """Parse every file with the stdlib ``email`` package (``policy.default``).

    Returns a list of problems (empty when all is well): parse defects,
    undecodable text parts, missing or duplicate Message-IDs.
    """
    import email

    problems = []
    seen: dict[str, Path] = {}
    for p in paths:
        msg = email.message_from_bytes(p.read_bytes(), policy=policy.default)
        mid = msg["Message-ID"]
        if not mid:
            problems.append(f"{p.name}: no Message-ID")
        elif mid in seen:
            problems.append(f"{p.name}: duplicate Message-ID of {seen[mid].name}")
        else:
            seen[mid] = p
        for h in ("From", "To", "Subject", "Date"):
            if msg[h] is None:
                problems.append(f"{p.name}: no {h}")
        for part in msg.walk():
            defects = [type(d).__name__ for d in part.defects]
            if defects:
                problems.append(f"{p.name}: {part.get_content_type()} defects {defects}")
            if part.get_content_maintype() == "text":
                try:
                    part.get_content()
                except (LookupError, UnicodeError) as e:
                    problems.append(f"{p.name}: {part.get_content_type()} undecodable: {e}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="directory to write the .eml files into")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--check", action="store_true", help="parse every file back with the email package"
    )
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be >= 1")
    stats: Counter[str] = Counter()
    t0 = time.perf_counter()
    paths = generate(args.dest, args.count, args.seed, stats=stats)
    dt = time.perf_counter() - t0
    print(f"wrote {len(paths)} mails to {args.dest} in {dt:.1f} s")
    print(format_stats(stats))
    if args.check:
        problems = check(paths)
        for line in problems[:50]:
            print("PROBLEM", line)
        print(f"check: {len(paths)} parsed, {len(problems)} problem(s)")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
