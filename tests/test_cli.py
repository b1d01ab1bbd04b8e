"""The command line, as operators and MTAs use it: ingest, read, quarantine, exit codes."""

from __future__ import annotations

import io
import json
import mailbox
import subprocess
import sys
from pathlib import Path

import pytest

from maild.cli import EX_CONFIG, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE, main
from tests.conftest import make_mail


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n')
    return str(path)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def test_ingest_file_then_list_show_export(tmp_path: Path, config: str) -> None:
    first = tmp_path / "first.eml"
    first.write_bytes(make_mail(message_id="<c1@customer.example>"))
    code, out = run("ingest", "--config", config, str(first))
    assert code == EX_OK
    assert "done 1" in out

    reply = tmp_path / "reply.eml"
    reply.write_bytes(make_mail(subject="Re: Printer on fire", in_reply_to="<c1@customer.example>"))
    assert run("ingest", "--config", config, str(reply))[0] == EX_OK

    code, out = run("tickets", "list", "--config", config, "--json")
    rows = json.loads(out)
    assert [(r["number"], r["message_count"]) for r in rows] == [("1", 2)]
    assert set(rows[0]) == {
        "number",
        "tag",
        "subject",
        "status",
        "priority",
        "queue",
        "requester",
        "created_at",
        "updated_at",
        "message_count",
    }

    code, out = run("tickets", "show", "1", "--config", config, "--json")
    detail = json.loads(out)
    assert {"team", "tier", "assignee", "participants", "messages", "events"} <= set(detail)
    assert set(detail["messages"][0]) == {
        "message_id",
        "direction",
        "kind",
        "class",
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "text",
        "text_stripped",
        "attachments",
    }
    assert detail["messages"][0]["direction"] == "in"

    code, out = run("tickets", "show", "1", "--config", config)
    assert "[#1] Printer on fire" in out

    code, out = run("tickets", "export", "--config", config)
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message_count"] == 2

    code, out = run("tickets", "export", "--config", config, "--since", "2099-01-01T00:00:00+00:00")
    assert out == ""


def test_ingest_directory_maildir_and_mbox(tmp_path: Path, config: str) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.eml").write_bytes(make_mail(sender=f"c{i}@dir.example"))
    maildir = mailbox.Maildir(tmp_path / "md", create=True)
    maildir.add(make_mail(sender="m@maildir.example"))
    box = mailbox.mbox(tmp_path / "box.mbox")
    box.add(make_mail(sender="x@mbox.example"))
    box.add(make_mail(sender="y@mbox.example"))
    box.flush()
    box.close()
    code, out = run(
        "ingest", "--config", config, str(folder), str(tmp_path / "md"), str(tmp_path / "box.mbox")
    )
    assert code == EX_OK
    assert "done 6" in out
    rows = json.loads(run("tickets", "list", "--config", config, "--json")[1])
    assert {r["requester"] for r in rows} == {
        "c0@dir.example",
        "c1@dir.example",
        "c2@dir.example",
        "m@maildir.example",
        "x@mbox.example",
        "y@mbox.example",
    }


def test_missing_path_is_66_and_spools_nothing(tmp_path: Path, config: str) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(make_mail())
    code, _ = run("ingest", "--config", config, str(good), str(tmp_path / "absent.eml"))
    assert code == EX_NOINPUT
    assert json.loads(run("tickets", "list", "--config", config, "--json")[1]) == []


def test_usage_errors_are_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("ingest")[0] == EX_USAGE
    assert run("frobnicate")[0] == EX_USAGE
    # A time that is not one is a usage error, not a traceback, wherever a command takes one.
    for argv in (("rules", "test", "--at"), ("sla", "tick", "--now"), ("sla", "status", "--now")):
        assert run(*argv, "monday", "x")[0] == EX_USAGE
        assert "not an ISO time: 'monday'" in capsys.readouterr().err


def test_bad_config_is_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[database]\nnope = 1\n")
    assert run("tickets", "list", "--config", str(bad))[0] == EX_CONFIG


def test_unreachable_database_is_tempfail(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[database]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/none"\n')
    mail = tmp_path / "m.eml"
    mail.write_bytes(make_mail())
    assert run("ingest", "--config", str(bad), str(mail))[0] == EX_TEMPFAIL


def test_quarantine_list_show_retry(tmp_path: Path, config: str) -> None:
    nofrom = tmp_path / "nofrom.eml"
    nofrom.write_bytes(b"To: support@example.com\r\nSubject: anonymous\r\n\r\nwho?\r\n")
    auto = tmp_path / "auto.eml"
    auto.write_bytes(make_mail(headers={"Auto-Submitted": "auto-replied"}))
    assert run("ingest", "--config", config, str(nofrom), str(auto))[0] == EX_OK

    items = json.loads(run("quarantine", "list", "--config", config, "--json")[1])
    assert [(i["state"], i["step"], i["subject"]) for i in items] == [
        ("quarantined", "identify", "anonymous")
    ]
    assert set(items[0]) == {"id", "state", "step", "reason", "received_at", "from", "subject"}
    everything = json.loads(
        run("quarantine", "list", "--config", config, "--json", "--include-ignored")[1]
    )
    assert [i["state"] for i in everything] == ["quarantined", "ignored"]

    code, out = run("quarantine", "show", str(items[0]["id"]), "--config", config)
    assert code == EX_OK
    assert "who?" in out

    code, out = run("quarantine", "retry", str(items[0]["id"]), "--config", config)
    assert code == EX_OK
    assert "quarantined 1" in out  # still no sender: back in quarantine, not lost
    assert run("quarantine", "retry", "424242", "--config", config)[0] == EX_NOINPUT


def test_stdin_and_console_script(tmp_path: Path, db_url: str) -> None:
    """The installed entry point, fed on stdin as an MTA pipe would."""
    env = {"MAILD_DATABASE_URL": db_url, "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "maild"), "ingest", "-"],
        input=make_mail(subject="via pipe"),
        capture_output=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    listing = subprocess.run(
        [str(Path(sys.executable).parent / "maild"), "tickets", "list"],
        capture_output=True,
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
    )
    assert b"via pipe" in listing.stdout


def test_the_readme_samples_make_one_conversation(config: str) -> None:
    """README: `maild ingest samples/` files both mails in one ticket, although the reply
    comes first in file-name order."""
    samples = Path(__file__).resolve().parents[1] / "samples"
    assert run("ingest", "--config", config, str(samples))[0] == EX_OK
    [ticket] = json.loads(run("tickets", "list", "--config", config, "--json")[1])
    assert ticket["message_count"] == 2
