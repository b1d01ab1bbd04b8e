"""Jinja2 templates for outbound mail: the operator's `templates/` before the packaged ones.

A template NAME (`requester/ticket_created`) is three files: `NAME.subject.j2`,
`NAME.txt.j2` and optionally `NAME.html.j2`; a language variant puts the language before
the part (`NAME.hu.txt.j2`). Undefined variables raise (StrictUndefined): a blank in a
customer's mail is worse than an error. Only `.html.j2` files autoescape, so customer
text never becomes markup there and stays verbatim in the text part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
)
from jinja2 import TemplateError as TemplateError  # what render raises, for callers

PACKAGED = Path(__file__).parent / "templates"
_PARTS = ("subject", "txt", "html")


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    language: str


class TemplateMissing(LookupError):
    """No subject or text part for the template in any language we may fall back to."""


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith(".html.j2")


class Templates:
    """Finds and renders templates; built once per settings (Jinja caches compiled files)."""

    def __init__(self, operator_dir: Path | None, default_language: str = "en") -> None:
        loaders = [FileSystemLoader(str(operator_dir))] if operator_dir is not None else []
        loaders.append(FileSystemLoader(str(PACKAGED)))
        self.default_language = default_language
        self._loader = ChoiceLoader(loaders)
        self._env = Environment(
            loader=self._loader,
            undefined=StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=True,
        )

    def _file(self, name: str, part: str, language: str | None) -> str | None:
        """The file name of a part in one language (None: the unsuffixed default), if any."""
        filename = f"{name}.{language}.{part}.j2" if language else f"{name}.{part}.j2"
        try:
            # Only looks the file up: a syntax error is reported where it is rendered.
            self._loader.get_source(self._env, filename)
        except TemplateNotFound:
            return None
        return filename

    def render(self, name: str, context: dict[str, Any], language: str | None = None) -> Rendered:
        """Render in `language` if that variant has a text part, else the default language,
        else the unsuffixed files. Raises TemplateMissing, or a jinja2 TemplateError."""
        for candidate in dict.fromkeys([language, self.default_language, None]):
            text_file = self._file(name, "txt", candidate)
            subject_file = self._file(name, "subject", candidate)
            if text_file is None or subject_file is None:
                continue
            html_file = self._file(name, "html", candidate)
            values = {**context, "language": candidate or self.default_language}
            subject = self._env.get_template(subject_file).render(values)
            return Rendered(
                subject=" ".join(subject.split()),
                text=self._env.get_template(text_file).render(values),
                html=self._env.get_template(html_file).render(values) if html_file else None,
                language=candidate or self.default_language,
            )
        raise TemplateMissing(f"template {name!r}: no subject and text part")

    def names(self) -> list[tuple[str, str | None]]:
        """Every (template name, language) with a text part, over both directories."""
        found: set[tuple[str, str | None]] = set()
        for filename in self._env.list_templates(extensions=["j2"]):
            stem, _, rest = filename.partition(".")
            pieces = rest.split(".")
            if pieces[-2:-1] == ["txt"] or pieces == ["txt", "j2"]:
                language = pieces[0] if len(pieces) == 3 else None
                found.add((stem, language))
        return sorted(found, key=lambda item: (item[0], item[1] or ""))

    def check(self, context_for: Callable[[str], dict[str, Any]] | None = None) -> list[str]:
        """Render every template and part against the context its name gets (default:
        `sample_context`); one line per problem, naming file and line."""
        context_for = context_for or sample_context
        problems: list[str] = []
        for name, language in self.names():
            context = context_for(name)
            for part in _PARTS:
                filename = self._file(name, part, language)
                if filename is None:
                    if part != "html":
                        problems.append(f"{name} ({language or 'default'}): no {part} part")
                    continue
                values = {**context, "language": language or self.default_language}
                try:
                    self._env.get_template(filename).render(values)
                except TemplateError as exc:
                    line = getattr(exc, "lineno", None)  # syntax errors know their line
                    where = f":{line}" if line else ""
                    problems.append(f"{filename}{where}: {exc.message or exc}")
        return problems


# Variables only some templates get, keyed by audience (the part of the name before "/")
# or by a full name (`agent/sla_warning`), which adds to its audience's. A template must
# check clean against exactly what it will be given at run time, so whoever sends a new
# kind of mail adds its sample variables here.
# The ticket every template gets (`maild/outbox/context.py` builds the real one).
_SAMPLE_TICKET: dict[str, Any] = {
    "number": "1042",
    "tag": "[#1042]",
    "subject": "Printer on fire",
    "status": "new",
    "priority": "normal",
    "type": None,
    "queue": None,
    "team": None,
    "assignee": None,
    "created_at": "Mon, 02 Mar 2026 09:00:01 +0000",
}
_AUDIENCE_SAMPLES: dict[str, dict[str, Any]] = {
    "requester": {},
    # agents (issue 7): notifications and error mails (maild/agents/desk.py). Agents also
    # see the ticket's tier and tags.
    "agent": {
        "ticket": {
            **_SAMPLE_TICKET,
            "team": "first-line",
            "assignee": "anna@example.com",
            "tier": 1,
            "tags": ["printer"],
        },
        "agent": {"address": "anna@example.com", "name": "Anna Kovács"},
        "reply_address": "support+t1042.a1b2c3d4e.k1.0123456789abcdef@example.com",
        "attachments": [{"filename": "photo.jpg", "size": 48213, "attached": True}],
        "history": [
            {"number": "998", "subject": "Toner", "status": "closed", "created_at": "2026-01-20"}
        ],
        "notes": [{"agent": "bence@example.com", "text": "Called her.", "at": "2026-03-02"}],
        "commands": [["#status open|pending|resolved|closed", "set the status"]],
    },
    "agent/command_error": {
        "errors": ["#status sleeping: status must be one of open, pending, resolved, closed"]
    },
    "agent/assigned": {"assigned_by": {"address": "bence@example.com", "name": "Bence Tóth"}},
}
# sla (issue 8): escalation notices to agents and leads (maild/sla/sweep.py).
_SLA_SAMPLE: dict[str, Any] = {
    "ticket": {**_AUDIENCE_SAMPLES["agent"]["ticket"], "team": "network", "tier": 2},
    "recipient": {"address": "david@example.com", "role": "lead"},
    "sla": {
        "policy": "standard",
        "target": "first_response",
        "target_title": "first response",
        "stage": "breach",
        "occurrence": 1,
        "due_at": "2026-03-02 14:00 CET",
        "late": True,
        "overdue": "0m",
        "remaining": "",
        "escalated": {
            "from_team": "first-line",
            "to_team": "network",
            "from_tier": 1,
            "to_tier": 2,
        },
    },
}
_AUDIENCE_SAMPLES.update(
    dict.fromkeys(("agent/sla_warning", "agent/sla_breach", "lead/sla_breach"), _SLA_SAMPLE)
)


def sample_context(name: str | None = None) -> dict[str, Any]:
    """Sample values of exactly the variables template `name` gets (documented in
    templates/README.md): what every template gets (`maild/outbox/context.py` builds the
    real thing), plus its audience's and its own. A template that checks clean also
    renders."""
    audience = (name or "").partition("/")[0]
    own = _AUDIENCE_SAMPLES.get(name, {}) if name else {}
    return {
        "ticket": dict(_SAMPLE_TICKET),
        "requester": {"address": "alice@customer.example", "name": "Alice Customer"},
        "message": {
            "subject": "Printer on fire",
            "text": "Hello,\n\nthe printer is on fire.\n",
            "message_id": "<a1@customer.example>",
            "date": "Mon, 02 Mar 2026 09:00:00 +0000",
        },
        "support_address": "support@example.com",
        **_AUDIENCE_SAMPLES.get(audience, {}),
        **own,
    }
