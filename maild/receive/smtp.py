"""The SMTP/LMTP listener: accept mail for our addresses, spool it, and only then say 250.

The only module that imports aiosmtpd.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from maild.config import ListenerSettings, Settings
from maild.errors import TemporaryFailure
from maild.logs import event
from maild.receive.smtp_data import read_data
from maild.receive.throttle import Throttle
from maild.types import Envelope

log = logging.getLogger("maild.smtp")

# aiosmtpd answers a SIZE= over the limit without an enhanced status code; RFC 3463
# wants 5.3.4.
_REWRITES = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
}

SpoolPut = Callable[[bytes, Envelope], Awaitable[int]]
Observer = Callable[[str], None]


class Listener:
    """Connection bookkeeping shared by every session of one daemon."""

    def __init__(
        self,
        settings: Settings,
        put: SpoolPut,
        observe: Observer,
        *,
        throttle: Throttle,
        accepting: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.put = put
        self.observe = observe  # called with "accepted", "tempfail", "refused_recipient" ...
        self.throttle = throttle
        # False while the spool is past its high mark (backpressure.py); cheap to call.
        self.accepting = accepting
        self.sessions: set[_SmtpSession] = set()
        self.closing = False
        self.idle = asyncio.Condition()
        self.tls_context = _tls_context(settings)

    def factory(self, listener: ListenerSettings) -> Callable[[], SMTP]:
        protocol_class = _LmtpSession if listener.protocol == "lmtp" else _SmtpSession

        def make() -> SMTP:
            smtp = self.settings.smtp
            return protocol_class(
                self,
                _Handler(self, lmtp=listener.protocol == "lmtp"),
                data_size_limit=self.settings.mail.max_message_size,
                enable_SMTPUTF8=True,
                hostname=smtp.hostname,
                ident="maild",
                tls_context=self.tls_context,
                require_starttls=smtp.require_starttls and self.tls_context is not None,
                timeout=smtp.idle_timeout,
                command_call_limit=smtp.max_commands,
                loop=asyncio.get_running_loop(),
            )

        return make

    async def drain(self, grace: float) -> None:
        """Stop new transactions; let those in flight finish within `grace` seconds."""
        self.closing = True
        for session in list(self.sessions):
            if not session.in_transaction:
                session.hang_up()
        deadline = time.monotonic() + grace
        async with self.idle:
            while any(s.in_transaction for s in self.sessions):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self.idle.wait(), remaining)
                except TimeoutError:
                    break
        for session in list(self.sessions):
            session.hang_up()

    async def notify_idle(self) -> None:
        async with self.idle:
            self.idle.notify_all()


class _SessionMixin:
    """Connection limits, enhanced status codes and graceful hang-up for both protocols."""

    listener: Listener
    transport: Any
    envelope: SmtpEnvelope | None

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def hang_up(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.3.2 Service shutting down\r\n")
            self.transport.close()


class _SmtpSession(_SessionMixin, SMTP):
    def __init__(self, listener: Listener, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener

    def connection_made(self, transport: Any) -> None:
        too_many = len(self.listener.sessions) >= self.listener.settings.smtp.max_connections
        if too_many or self.listener.closing:
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self.listener.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.listener.sessions:
            self.listener.sessions.discard(self)
            super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            status = _REWRITES.get(status, status)
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA command, with the content read in chunks (smtp_data.py).

        Unlike aiosmtpd, lines longer than RFC 5321's 1000 octets are taken, as
        Postfix and Exim take them: the pipeline's own line limit (`max_line_length`)
        decides, and quarantines rather than bounces.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:
            # The connection went away during DATA: aiosmtpd cancels the session's task.
            self._writer.close()
            raise
        if content is None:
            status = "552 5.3.4 Message too big for system"
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class _LmtpSession(_SmtpSession, LMTP):
    pass


class _Handler:
    def __init__(self, listener: Listener, *, lmtp: bool) -> None:
        self._listener = listener
        self._lmtp = lmtp

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if self._listener.closing:
            return "421 4.3.2 Service shutting down"
        peer = _peer(session)
        over = self._listener.throttle.admit(address, peer)
        if over is not None:
            self._listener.observe("throttled")
            event(log, "mail throttled", over=over, mail_from=address, peer=peer)
            whose = "this sender" if over == "sender" else "your address"
            return f"451 4.7.1 Too many mails from {whose}, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if not self._listener.settings.is_support_address(address):
            self._listener.observe("refused_recipient")
            return "550 5.1.1 No such mailbox here"
        if not self._listener.accepting():
            # At RCPT, not after DATA: the client has not sent the mail yet.
            self._listener.observe("backpressure")
            return "451 4.3.2 System busy, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        raw = bytes(envelope.original_content or b"")
        peer = _peer(session)
        ours = Envelope(
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
            client_address=peer,
            helo=session.host_name,
        )
        stamped = _trace_headers(self._listener.settings, ours, session, self._lmtp) + raw
        try:
            spool_id = await self._listener.put(stamped, ours)
        except TemporaryFailure as exc:
            self._listener.observe("tempfail")
            event(log, "mail refused", logging.WARNING, reason=str(exc), peer=peer)
            status = "451 4.3.0 Temporary failure, please try again later"
            return self._per_recipient(status, envelope)
        finally:
            await self._listener.notify_idle()
        self._listener.observe("accepted")
        event(
            log,
            "mail accepted",
            spool_id=spool_id,
            peer=peer,
            mail_from=ours.mail_from,
            rcpt_to=",".join(ours.rcpt_to),
            size=len(raw),
        )
        return self._per_recipient(f"250 2.0.0 queued as {spool_id}", envelope)

    def _per_recipient(self, status: str, envelope: SmtpEnvelope) -> str:
        # LMTP answers DATA once per accepted recipient (RFC 2033 4.2). One spool row
        # carries all of them, so each gets the same answer.
        if not self._lmtp:
            return status
        return "\r\n".join(status for _ in envelope.rcpt_tos)


def _peer(session: SmtpSession) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")


def _trace_headers(
    settings: Settings, envelope: Envelope, session: SmtpSession, lmtp: bool
) -> bytes:
    """Received and Delivered-To, so rules can see how and for whom the mail came in."""
    now = format_datetime(datetime.now().astimezone())
    protocol = "LMTP" if lmtp else ("ESMTPS" if session.ssl else "ESMTP")
    helo = (envelope.helo or "unknown").replace("\r", "").replace("\n", "")[:255]
    lines = [
        f"Received: from {helo} ([{envelope.client_address}])\r\n"
        f"\tby {settings.smtp.hostname} (maild) with {protocol};\r\n\t{now}\r\n"
    ]
    lines.extend(f"Delivered-To: {rcpt}\r\n" for rcpt in envelope.rcpt_to)
    return "".join(lines).encode("utf-8", "replace")


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    smtp = settings.smtp
    if smtp.tls_cert is None or smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(smtp.tls_cert, smtp.tls_key)
    return context


async def serve(listener: Listener, settings: ListenerSettings) -> asyncio.AbstractServer:
    """Start one listener on the running loop."""
    loop = asyncio.get_running_loop()
    factory = listener.factory(settings)
    if settings.socket is not None:
        settings.socket.unlink(missing_ok=True)
        return await loop.create_unix_server(factory, path=str(settings.socket))
    return await loop.create_server(factory, host=settings.host, port=settings.port)
