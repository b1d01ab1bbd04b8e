"""`maild run` over real SMTP/LMTP on loopback: acceptance, refusals, outages, TLS, crashes."""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from sqlalchemy import create_engine, text

from tests.conftest import make_mail
from tests.daemon import MAILD, Daemon, write_config


def start(daemons: list[Daemon], tmp_path: Path, db_url: str, **sections: Any) -> Daemon:
    daemon = Daemon(write_config(tmp_path, db_url, **sections), tmp_path).start()
    daemons.append(daemon)
    return daemon


def export(tmp_path: Path, daemon: Daemon) -> list[dict[str, Any]]:
    result = subprocess.run(
        [MAILD, "tickets", "export", "--config", str(daemon.config)],
        capture_output=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def message_ids(tickets: list[dict[str, Any]]) -> list[str]:
    return [m["message_id"] for t in tickets for m in t["messages"]]


def test_smtplib_mail_becomes_ticket(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    daemon = start(daemons, tmp_path, db_url)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        code, banner = client.ehlo("client.example")
        assert code == 250
        assert b"SIZE" in banner
        refused = client.sendmail(
            "alice@customer.example",
            ["support@example.com"],
            make_mail(message_id="<smtp-1@customer.example>"),
        )
        assert refused == {}
    daemon.processed(1)
    tickets = export(tmp_path, daemon)
    assert message_ids(tickets) == ["<smtp-1@customer.example>"]
    message = tickets[0]["messages"][0]
    assert message["from"] == "alice@customer.example"


def test_aiosmtplib_client_and_metrics(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    daemon = start(daemons, tmp_path, db_url)

    async def send() -> None:
        await aiosmtplib.send(
            make_mail(message_id="<aio-1@customer.example>"),
            sender="alice@customer.example",
            recipients=["billing@example.com"],
            hostname="127.0.0.1",
            port=daemon.smtp_port,
        )

    asyncio.run(send())
    daemon.processed(1)
    assert message_ids(export(tmp_path, daemon)) == ["<aio-1@customer.example>"]
    base = f"http://127.0.0.1:{daemon.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        health = json.load(response)
    assert health["database"] == "ok"
    assert health["spool_depth"] == 0
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'maild_mails_received_total{result="accepted",source="smtp"} 1.0' in metrics
    assert 'maild_mails_processed_total{result="done"} 1.0' in metrics
    assert "maild_spool_depth 0.0" in metrics


def test_unknown_recipient_refused_at_rcpt(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    daemon = start(daemons, tmp_path, db_url)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("spammer@evil.example")
        code, reply = client.rcpt("victim@elsewhere.example")
        assert (code, reply[:5]) == (550, b"5.1.1")
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@evil.example", ["nobody@example.org"], make_mail())


def test_oversized_mail_refused(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    daemon = start(daemons, tmp_path, db_url, mail={"max_message_size": 20_000})
    big = make_mail(body="x" * 60 + "\n" * 1 + ("y" * 70 + "\n") * 400)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("size")
        assert client.esmtp_features["size"] == "20000"
        # Announced size too large: refused at MAIL FROM.
        code, reply = client.mail("a@customer.example", ["SIZE=50000"])
        assert (code, reply[:5]) == (552, b"5.3.4")
        client.rset()
        # Not announced: refused after DATA.
        client.mail("a@customer.example")
        client.rcpt("support@example.com")
        code, reply = client.data(big)
        assert (code, reply[:5]) == (552, b"5.3.4")
    assert export(tmp_path, daemon) == []


def wait_for_empty_spool(db_url: str, timeout: float = 60.0) -> None:
    """The daemon is another process: watch its database until nothing is pending."""
    engine = create_engine(db_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as connection:
                pending = connection.execute(
                    text("SELECT count(*) FROM spool WHERE state = 'pending'")
                ).scalar_one()
            if pending == 0:
                return
            assert time.monotonic() < deadline, f"{pending} mails still pending"
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_database_down_gives_451_then_retry_ticketed_once(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    daemon = start(daemons, tmp_path, db_url, database={"sqlite_busy_timeout_ms": 300})
    raw = make_mail(message_id="<outage-1@customer.example>")
    blocker = _Outage(db_url, tmp_path)
    blocker.begin()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("alice@customer.example", ["support@example.com"], raw)
            assert (info.value.smtp_code, info.value.smtp_error[:5]) == (451, b"4.3.0")
    finally:
        blocker.end()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
        client.sendmail("alice@customer.example", ["support@example.com"], raw)
    daemon.processed(1)
    assert message_ids(export(tmp_path, daemon)) == ["<outage-1@customer.example>"]


class _Outage:
    """Makes the database refuse the daemon: a write lock on SQLite, no connections on PG."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self._connection: Any = None

    def begin(self) -> None:
        if self.db_url.startswith("sqlite"):
            engine = create_engine(self.db_url)
            self._connection = engine.raw_connection()
            self._connection.driver_connection.isolation_level = None
            self._connection.driver_connection.execute("BEGIN EXCLUSIVE")
            return
        name = self.db_url.rsplit("/", 1)[1]
        admin = create_engine(
            self.db_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
        admin.dispose()

    def end(self) -> None:
        if self.db_url.startswith("sqlite"):
            self._connection.driver_connection.execute("ROLLBACK")
            self._connection.close()
            return
        name = self.db_url.rsplit("/", 1)[1]
        admin = create_engine(
            self.db_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_many_concurrent_clients(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    daemon = start(daemons, tmp_path, db_url)
    count = 60

    async def one(i: int) -> None:
        await aiosmtplib.send(
            make_mail(sender=f"c{i}@many.example", message_id=f"<many-{i}@many.example>"),
            sender=f"c{i}@many.example",
            recipients=["support@example.com"],
            hostname="127.0.0.1",
            port=daemon.smtp_port,
            timeout=60,
        )

    async def all_of_them() -> None:
        await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(all_of_them())
    daemon.processed(count)
    ids = message_ids(export(tmp_path, daemon))
    assert sorted(ids) == sorted(f"<many-{i}@many.example>" for i in range(count))


def _lmtp_session(port: int, rcpts: list[str], raw: bytes) -> list[bytes]:
    """A minimal LMTP client that reads one DATA reply per recipient, as Postfix does."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            line = reader.readline()
            while line[3:4] == b"-":
                line = reader.readline()
            return line

        assert reply().startswith(b"220")
        sock.sendall(b"LHLO mta.example\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"MAIL FROM:<alice@customer.example>\r\n")
        assert reply().startswith(b"250")
        accepted = []
        for rcpt in rcpts:
            sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
            line = reply()
            if line.startswith(b"250"):
                accepted.append(rcpt)
        sock.sendall(b"DATA\r\n")
        assert reply().startswith(b"354")
        body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        replies = [reply() for _ in accepted]
        sock.sendall(b"QUIT\r\n")
        return replies


def test_lmtp_replies_per_recipient(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    daemon = start(daemons, tmp_path, db_url, listener={"protocol": "lmtp", "port": 0})
    # port 0 picks a free port; read it from the ready event.
    port = int(daemon.events[-1]["listeners"].split(":")[-1])
    replies = _lmtp_session(
        port,
        ["support@example.com", "nobody@other.example", "billing@example.com"],
        make_mail(message_id="<lmtp-1@customer.example>"),
    )
    assert len(replies) == 2
    assert all(r.startswith(b"250 2.0.0") for r in replies)
    daemon.processed(1)
    tickets = export(tmp_path, daemon)
    assert message_ids(tickets) == ["<lmtp-1@customer.example>"]


def test_starttls(tmp_path: Path, db_url: str, daemons: list[Daemon]) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    daemon = start(
        daemons,
        tmp_path,
        db_url,
        smtp={"tls_cert": str(cert_path), "tls_key": str(key_path), "require_starttls": True},
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.mail("a@customer.example")
        assert code == 530  # STARTTLS first
        client.starttls(context=context)
        client.ehlo()
        client.sendmail(
            "alice@customer.example",
            ["support@example.com"],
            make_mail(message_id="<tls-1@customer.example>"),
        )
    daemon.processed(1)
    tickets = export(tmp_path, daemon)
    assert message_ids(tickets) == ["<tls-1@customer.example>"]


def _send_burst(
    port: int, mails: list[tuple[str, bytes]], acked: set[str], stop: threading.Event
) -> None:
    """Send until done or the server dies; record which Message-IDs got a 250."""
    for message_id, raw in mails:
        if stop.is_set() or message_id in acked:
            continue
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("alice@customer.example", ["support@example.com"], raw)
            acked.add(message_id)
        except (OSError, smtplib.SMTPException):
            return


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_mid_burst_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, db_url: str, daemons: list[Daemon], seed: int
) -> None:
    rng = random.Random(seed)
    mails = [
        (
            f"<crash-{seed}-{i}@customer.example>",
            make_mail(message_id=f"<crash-{seed}-{i}@customer.example>"),
        )
        for i in range(80)
    ]
    acked: set[str] = set()
    daemon = start(daemons, tmp_path, db_url)
    stop = threading.Event()
    sender = threading.Thread(target=_send_burst, args=(daemon.smtp_port, mails, acked, stop))
    sender.start()
    daemon.wait_for(lambda e: e.get("event") == "mail accepted", n=rng.randint(5, 40))
    daemon.kill()
    sender.join(60)
    accepted_before_kill = set(acked)

    daemon = start(daemons, tmp_path, db_url)
    _send_burst(daemon.smtp_port, mails, acked, threading.Event())
    assert acked == {message_id for message_id, _ in mails}
    wait_for_empty_spool(db_url)
    ids = message_ids(export(tmp_path, daemon))
    assert sorted(ids) == sorted(message_id for message_id, _ in mails)
    assert len(ids) == len(set(ids))
    assert accepted_before_kill <= set(ids)


def test_sigterm_during_burst_exits_0_and_keeps_everything(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    mails = [
        (f"<term-{i}@customer.example>", make_mail(message_id=f"<term-{i}@customer.example>"))
        for i in range(60)
    ]
    acked: set[str] = set()
    daemon = start(daemons, tmp_path, db_url)
    stop = threading.Event()
    sender = threading.Thread(target=_send_burst, args=(daemon.smtp_port, mails, acked, stop))
    sender.start()
    daemon.wait_for(lambda e: e.get("event") == "mail accepted", n=10)
    assert daemon.terminate() == 0
    sender.join(60)
    assert acked
    daemon = start(daemons, tmp_path, db_url)
    # Whatever the first life accepted but did not process is processed now.
    wait_for_empty_spool(db_url)
    ids = set(message_ids(export(tmp_path, daemon)))
    assert acked <= ids
