"""Thin commands: parse arguments, call the app, map outcomes to sysexits codes."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from maild import logs
from maild.config import Settings, load_settings
from maild.errors import ConfigError, Quarantine, TemporaryFailure
from maild.launch import collector_paused
from maild.pipeline.limits import MailLimits
from maild.receive.bulk import BulkIngest
from maild.receive.ingest import MissingInput
from maild.roles import ROLES
from maild.types import OUTBOX_STATES

if TYPE_CHECKING:
    from maild.app import App

# The database and pipeline stack (App) is imported in `main`, once `maild ingest` has
# forked its parse processes (receive/bulk.py); see also above _build_parser.
#
# What the imports built lives as long as the process, so the garbage collector need
# not walk it: left in its sight, the full collections the interpreter makes on its way
# out cost every command (each `maild ingest -` from an MTA) a fifth of a second.
gc.freeze()

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78

# Every command pays for the imports at the top of this file before it starts, each
# `maild ingest -` an MTA pipes a mail into included; so what only some commands use
# (the read views, the rules and SLA reports, the mail preview, the daemon) is imported
# in their handlers.


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config.toml (default: $MAILD_CONFIG, ./config.toml)")

    parser = argparse.ArgumentParser(
        prog="maild", description="Email-to-ticket daemon.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--role", choices=ROLES, default="all", help="what this instance does")
    run.add_argument(
        "--workers", type=_worker_count, metavar="N", help="processes (default: [daemon] workers)"
    )
    run.set_defaults(handler=_run)

    ingest = commands.add_parser(
        "ingest", parents=[common], help="spool and process mail from files or stdin"
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help=".eml, dir, Maildir, mbox, or -")
    ingest.set_defaults(handler=_ingest)

    tickets = commands.add_parser("tickets", help="read tickets").add_subparsers(
        dest="action", required=True
    )
    listing = tickets.add_parser("list", parents=[common])
    listing.add_argument("--status")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_tickets_list)
    show = tickets.add_parser("show", parents=[common])
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_tickets_show)
    export = tickets.add_parser("export", parents=[common], help="JSON Lines, one ticket a line")
    export.add_argument("--since", type=datetime.fromisoformat, metavar="ISO")
    export.set_defaults(handler=_tickets_export)

    quarantine = commands.add_parser("quarantine", help="mail that made no ticket").add_subparsers(
        dest="action", required=True
    )
    qlist = quarantine.add_parser("list", parents=[common])
    qlist.add_argument("--json", action="store_true")
    qlist.add_argument("--include-ignored", action="store_true")
    qlist.set_defaults(handler=_quarantine_list)
    qshow = quarantine.add_parser("show", parents=[common])
    qshow.add_argument("id", type=int)
    qshow.set_defaults(handler=_quarantine_show)
    retry = quarantine.add_parser("retry", parents=[common])
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?")
    target.add_argument("--all", action="store_true")
    retry.set_defaults(handler=_quarantine_retry)

    rules = commands.add_parser("rules", help="routing rules").add_subparsers(
        dest="action", required=True
    )
    check = rules.add_parser("check", parents=[common], help="validate a rules directory")
    check.add_argument("directory", nargs="?", help="default: [paths] rules")
    check.set_defaults(handler=_rules_check, needs_app=False)
    trial = rules.add_parser("test", parents=[common], help="show how the rules route a mail")
    trial.add_argument("mail", help="an .eml file, or - for stdin")
    trial.add_argument("--json", action="store_true")
    trial.add_argument("--as-reply", action="store_true", help="as a follow-up to a ticket")
    trial.add_argument(
        "--at",
        type=_instant,
        metavar="ISO",
        help="as if it arrived then, for business_hours (UTC if no zone; default: now)",
    )
    trial.set_defaults(handler=_rules_test, needs_app=False)

    # outbox and templates (issue 6)
    outbox = commands.add_parser("outbox", help="outbound mail").add_subparsers(
        dest="action", required=True
    )
    olist = outbox.add_parser("list", parents=[common])
    olist.add_argument("--state", choices=OUTBOX_STATES)
    olist.add_argument("--json", action="store_true")
    olist.set_defaults(handler=_outbox_list)
    oretry = outbox.add_parser("retry", parents=[common], help="send a failed mail again")
    oretry.add_argument("id", type=int)
    oretry.set_defaults(handler=_outbox_retry)
    templates = commands.add_parser("templates", help="mail templates").add_subparsers(
        dest="action", required=True
    )
    tcheck = templates.add_parser("check", parents=[common], help="render every template")
    tcheck.set_defaults(handler=_templates_check, needs_app=False)
    trender = templates.add_parser(
        "render", parents=[common], help="print a template's mail as it would be sent"
    )
    trender.add_argument("name", help="e.g. requester/ticket_created")
    trender.add_argument("--ticket", metavar="NUMBER", help="use this ticket, not sample data")
    trender.add_argument("--lang", help="language variant, e.g. hu")
    trender.set_defaults(handler=_templates_render, needs_app=False)

    # IMAP mailboxes (issue 4)
    imap = commands.add_parser("imap", help="IMAP mailboxes").add_subparsers(
        dest="action", required=True
    )
    icheck = imap.add_parser(
        "check", parents=[common], help="connect, log in and report, changing nothing"
    )
    icheck.add_argument("name", nargs="?", metavar="NAME", help="one [[imap]] name (default: all)")
    icheck.add_argument("--json", action="store_true")
    icheck.set_defaults(handler=_imap_check)

    # sla (issue 8)
    sla = commands.add_parser("sla", help="service levels").add_subparsers(
        dest="action", required=True
    )
    scheck = sla.add_parser("check", parents=[common], help="validate rules/sla.yaml")
    scheck.add_argument("directory", nargs="?", help="default: [paths] rules")
    scheck.set_defaults(handler=_sla_check, needs_app=False)
    stick = sla.add_parser("tick", parents=[common], help="run one SLA sweep")
    stick.add_argument(
        "--now", type=_instant, metavar="ISO", help="sweep as at this time (UTC if no zone)"
    )
    stick.add_argument("--json", action="store_true")
    stick.set_defaults(handler=_sla_tick)
    sstatus = sla.add_parser("status", parents=[common], help="due times and fired stages")
    sstatus.add_argument("number", nargs="?")
    sstatus.add_argument(
        "--now", type=_instant, metavar="ISO", help="elapsed time as at this time (UTC if no zone)"
    )
    sstatus.add_argument("--limit", type=int, default=100, help="tickets listed (default 100)")
    sstatus.add_argument("--json", action="store_true")
    sstatus.set_defaults(handler=_sla_status)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="action", required=True
    )
    db.add_parser("upgrade", parents=[common]).set_defaults(handler=_db_upgrade)
    db.add_parser("current", parents=[common]).set_defaults(handler=_db_current)
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage; sysexits says 64
        return EX_USAGE if exc.code else EX_OK
    handler: Callable[[App, argparse.Namespace, TextIO], int] = args.handler
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"maild: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    logs.configure(settings.logging.format, settings.logging.level)
    if not getattr(args, "needs_app", True):
        return int(args.handler(settings, args, out))
    try:
        if handler is _ingest:
            args.bulk = BulkIngest(settings, args.paths)
            args.bulk.start()
    except MissingInput as exc:
        print(f"maild: {exc}", file=sys.stderr)
        return EX_NOINPUT
    # Here, after the parse processes of an ingest were forked: see the top.
    with collector_paused():
        from maild.app import App
        from maild.rules import RuleError
    gc.freeze()
    app = App(settings)
    try:
        if handler is not _db_upgrade:
            app.prepare_schema()
        if handler in (_run, _ingest, _quarantine_retry):
            _ = app.rules  # fail before accepting or filing any mail
            app.sla.raise_if_broken()
        return handler(app, args, out)
    except RuleError as exc:
        print(f"maild: the rules are broken, nothing was done:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except MissingInput as exc:
        print(f"maild: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except TemporaryFailure as exc:
        print(f"maild: temporary failure, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        if handler is _ingest:
            args.bulk.close()
        app.close()


def _run(app: App, args: argparse.Namespace, out: TextIO) -> int:
    # Imported here: the listener, scheduler and metrics stacks cost a third of a second,
    # which every `maild ingest -` an MTA pipes a mail into would otherwise pay.
    import asyncio

    from maild import daemon

    return asyncio.run(daemon.run(app, ROLES[args.role], args.workers))


def _instant(value: str) -> datetime:
    """An ISO time for --at and --now; UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {value!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _worker_count(value: str) -> int:
    # The same bounds as `[daemon] workers`.
    count = int(value)
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError("must be between 0 and 64")
    return count


def _ingest(app: App, args: argparse.Namespace, out: TextIO) -> int:
    # Started in `main`, before the database stack was loaded.
    bulk: BulkIngest = args.bulk
    bulk.run(app, out)
    return EX_OK


def _tickets_list(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild import views  # here, not at the top: see above _build_parser

    with app.db.transaction() as session:
        rows = views.list_tickets(session, app.numbering, args.status)
    if args.json:
        _dump(rows, out)
    else:
        columns = ["number", "status", "priority", "requester", "message_count", "subject"]
        print(views.render_table(rows, columns), file=out)
    return EX_OK


def _tickets_show(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild import views  # here, not at the top: see above _build_parser

    with app.db.transaction() as session:
        ticket = views.find_ticket(session, args.number)
        if ticket is None:
            print(f"maild: no ticket {args.number}", file=sys.stderr)
            return EX_NOINPUT
        detail = views.ticket_detail(session, ticket, app.numbering)
    if args.json:
        _dump(detail, out)
    else:
        print(views.render_ticket_text(detail), file=out)
    return EX_OK


def _tickets_export(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild import views  # here, not at the top: see above _build_parser

    since = args.since
    with app.db.transaction() as session:
        for detail in views.export_tickets(session, app.numbering, since):
            out.write(json.dumps(detail, ensure_ascii=False) + "\n")
    return EX_OK


def _quarantine_list(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild import views  # here, not at the top: see above _build_parser

    with app.db.transaction() as session:
        rows = views.list_quarantine(session, args.include_ignored)
    if args.json:
        _dump(rows, out)
    else:
        print(
            views.render_table(rows, ["id", "state", "step", "reason", "from", "subject"]), file=out
        )
    return EX_OK


def _quarantine_show(app: App, args: argparse.Namespace, out: TextIO) -> int:
    # Here, not at the top: see above _build_parser.
    from maild import spool, views
    from maild.db.models import SpoolEntry

    with app.db.transaction() as session:
        entry = session.get(SpoolEntry, args.id)
        if entry is None:
            print(f"maild: no spooled mail {args.id}", file=sys.stderr)
            return EX_NOINPUT
        item = views.quarantine_item(entry)
        item["envelope"] = entry.envelope
        item["source"] = entry.source
        raw = spool.raw_of(session, entry.id) or b""
    for key, value in item.items():
        print(f"{key}: {value}", file=out)
    print("", file=out)
    print(raw.decode("utf-8", "replace"), file=out)
    return EX_OK


def _quarantine_retry(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild import spool  # here, not at the top: see above _build_parser

    with app.db.transaction() as session:
        count = spool.requeue(session, None if args.all else [args.id])
    if count == 0 and not args.all:
        print(f"maild: {args.id} is not in quarantine", file=sys.stderr)
        return EX_NOINPUT
    outcomes = app.processor.drain()
    states = Counter(o.state.value for o in outcomes)
    print(f"retried {count}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())), file=out)
    return EX_OK


def _rules_check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from maild.rules import cli as rules_cli  # here, not at the top: see above _build_parser

    code, text = rules_cli.check(args.directory or settings.paths.rules)
    print(text, file=out if code == EX_OK else sys.stderr)
    return code


def _rules_test(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # Here, not at the top: see above _build_parser.
    from maild.rules import RuleError
    from maild.rules import cli as rules_cli

    if args.mail == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(args.mail).read_bytes()
        except OSError as exc:
            print(f"maild: {args.mail}: {exc.strerror}", file=sys.stderr)
            return EX_NOINPUT
    try:
        limits = MailLimits.of(settings.mail)
        report = rules_cli.test(
            raw,
            settings.paths.rules,
            args.as_reply,
            args.json,
            limits=limits,
            received_at=args.at,
        )
        print(report, file=out)
    except RuleError as exc:
        print(f"maild: the rules are broken:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except Quarantine as exc:
        what = "would be quarantined" if exc.step == "route" else "is not a mail maild can read"
        print(f"maild: {args.mail} {what}: {exc.reason}", file=sys.stderr)
        return EX_DATAERR
    return EX_OK


def _outbox_list(app: App, args: argparse.Namespace, out: TextIO) -> int:
    # Here, not at the top: see above _build_parser.
    from maild import views
    from maild.outbox import admin as outbox_admin

    with app.db.transaction() as session:
        rows = outbox_admin.list_rows(session, args.state)
    if args.json:
        _dump(rows, out)
    else:
        columns = ["id", "state", "ticket", "recipient", "attempts", "created_at", "last_error"]
        print(views.render_table(rows, columns), file=out)
    return EX_OK


def _outbox_retry(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild.outbox import admin as outbox_admin  # here, not at the top: see above _build_parser

    with app.db.transaction() as session:
        found = outbox_admin.retry(session, args.id, app.clock.now(), app.settings.outbound.max_age)
    if not found:
        print(f"maild: no failed or pending outbox mail {args.id}", file=sys.stderr)
        return EX_NOINPUT
    print(f"outbox mail {args.id} is due now; the running daemon sends it", file=out)
    return EX_OK


def _templates_check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from maild.templating import Templates  # here, not at the top: see above _build_parser

    templates = Templates(settings.paths.templates, settings.outbound.language)
    problems = templates.check()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EX_DATAERR
    print(f"{len(templates.names())} templates render cleanly", file=out)
    return EX_OK


def _templates_render(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # Here, not at the top: see above _build_parser.
    from maild.app import App
    from maild.outbox.preview import NoSuchTicket, context_of_ticket, render_mail
    from maild.templating import TemplateError, TemplateMissing, Templates, sample_context

    templates = Templates(settings.paths.templates, settings.outbound.language)
    app = App(settings)
    try:
        context = sample_context(args.name)
        if args.ticket is not None:
            # Only a real ticket needs the database; the sample renders without one.
            app.prepare_schema()
            with app.db.transaction() as session:
                context = context_of_ticket(
                    session.connection(), args.name, args.ticket, settings, app.numbering
                )
        mail = render_mail(
            templates,
            args.name,
            context,
            language=args.lang,
            settings=settings,
            numbering=app.numbering,
            now=app.clock.now(),
        )
    except NoSuchTicket as exc:
        print(f"maild: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except TemplateMissing as exc:
        print(f"maild: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except TemplateError as exc:
        print(f"maild: template {args.name}: {exc}", file=sys.stderr)
        return EX_DATAERR
    except TemporaryFailure as exc:
        print(f"maild: temporary failure, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        app.close()
    out.write(mail.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
    return EX_OK


def _imap_check(app: App, args: argparse.Namespace, out: TextIO) -> int:
    # Imported here: imapclient is loaded only by the commands that talk IMAP.
    from maild.receive import imap_check

    try:
        mailboxes = imap_check.select(app.settings.imap, args.name)
    except LookupError as exc:
        print(f"maild: {exc.args[0]}", file=sys.stderr)
        return EX_USAGE
    try:
        reports = [imap_check.check(m, app.db, app.clock) for m in mailboxes]
    except ConfigError as exc:  # a password or token variable that is not set
        print(f"maild: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.json:
        _dump([r.as_dict() for r in reports], out)
    else:
        text = "\n\n".join(imap_check.render(r) for r in reports)
        print(text or "no [[imap]] mailboxes", file=out)
    return EX_OK if all(r.ok for r in reports) else EX_UNAVAILABLE


def _sla_check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from maild.sla import cli as sla_cli  # here, not at the top: see above _build_parser

    code, text = sla_cli.check(args.directory or settings.paths.rules)
    print(text, file=out if code == EX_OK else sys.stderr)
    return code


def _sla_tick(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild.sla import cli as sla_cli  # here, not at the top: see above _build_parser

    report = sla_cli.tick(app, sla_cli.parse_now(args.now, app))
    print(sla_cli.dump(report) if args.json else sla_cli.render_tick(report), file=out)
    return EX_OK


def _sla_status(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild.sla import cli as sla_cli  # here, not at the top: see above _build_parser

    items = sla_cli.status(app, args.number, sla_cli.parse_now(args.now, app), args.limit)
    if items is None:
        print(f"maild: no ticket {args.number}", file=sys.stderr)
        return EX_NOINPUT
    print(sla_cli.dump(items) if args.json else sla_cli.render_status(items), file=out)
    return EX_OK


def _db_upgrade(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild.db import migrate  # here, not at the top: see above _build_parser

    migrate.upgrade(app.db.engine)
    print(f"database at revision {migrate.current_revision(app.db.engine)}", file=out)
    return EX_OK


def _db_current(app: App, args: argparse.Namespace, out: TextIO) -> int:
    from maild.db import migrate  # here, not at the top: see above _build_parser

    print(
        f"current {migrate.current_revision(app.db.engine)}, "
        f"head {migrate.head_revision(app.db.engine)}",
        file=out,
    )
    return EX_OK


def _dump(value: Any, out: TextIO) -> None:
    json.dump(value, out, ensure_ascii=False, indent=2)
    out.write("\n")
