"""The sender against a relay that wants TLS and a login: STARTTLS, SMTPS, AUTH, as
configured in `[outbound]`. A throwaway CA (trustme) signs the relay's certificate; maild
trusts it through `ca_file`, as an operator with a private relay would.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from maild.types import SpoolState
from tests.conftest import AppFactory, deliver, make_mail
from tests.test_outbox import ALICE, NO_RULES, SUPPORT, SinkHandler, free_port, sender, to_support

USER, PASSWORD = "maild", "s3cret"
# aiosmtpd itself sets its deprecated Session.login_data after every successful AUTH.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)


def authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd answers 535 itself.
    return AuthResult(success=ok, handled=False)


@dataclass
class TlsRelay:
    port: int
    handler: SinkHandler
    ca_file: Path


@pytest.fixture(params=["starttls", "implicit"])
def relay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TlsRelay]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "relay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = SinkHandler()
    port = free_port()
    options: dict[str, Any] = {"authenticator": authenticate}
    if request.param == "starttls":
        # No AUTH (and no mail) before STARTTLS: a password never crosses in clear.
        options |= {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
    else:
        # aiosmtpd's auth_require_tls only knows STARTTLS; SMTPS is TLS from the start.
        options |= {"ssl_context": context, "auth_require_tls": False}
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    yield TlsRelay(port, handler, ca_file)
    controller.stop()


def relay_app(make_app: AppFactory, relay: TlsRelay, tls: str, **outbound: Any) -> Any:
    return make_app(
        outbound={
            "enabled": True,
            "host": "127.0.0.1",
            "port": relay.port,
            "tls": tls,
            "ca_file": str(relay.ca_file),
            "username": USER,
            "password": PASSWORD,
            **outbound,
        },
        paths=NO_RULES,
    )


def test_sends_over_tls_with_login(
    make_app: AppFactory, relay: TlsRelay, request: pytest.FixtureRequest
) -> None:
    tls = request.node.callspec.params["relay"]
    app = relay_app(make_app, relay, tls)
    assert deliver(app, make_mail(), to_support()).state is SpoolState.DONE
    assert [a.result for a in sender(app).send_due()] == ["sent"]
    mail_from, rcpts, raw = relay.handler.accepted.get(timeout=10)
    assert (mail_from, rcpts) == (SUPPORT, [ALICE])
    assert b"Auto-Submitted: auto-replied" in raw


def test_a_wrong_password_is_retried_not_lost(
    make_app: AppFactory, relay: TlsRelay, request: pytest.FixtureRequest
) -> None:
    tls = request.node.callspec.params["relay"]
    app = relay_app(make_app, relay, tls, password="wrong")
    deliver(app, make_mail(), to_support())
    (attempt,) = sender(app).send_due()
    # The relay's refusal is its (or our config's) state, not the mail's.
    assert attempt.result == "retry" and attempt.error is not None
    assert attempt.error.startswith("535")
    assert relay.handler.accepted.qsize() == 0


def test_an_untrusted_certificate_is_refused(
    make_app: AppFactory, relay: TlsRelay, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tls = request.node.callspec.params["relay"]
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    app = relay_app(make_app, relay, tls, ca_file=str(stranger))
    deliver(app, make_mail(), to_support())
    (attempt,) = sender(app).send_due()
    assert attempt.result == "retry" and "CERTIFICATE_VERIFY_FAILED" in (attempt.error or "")
    assert relay.handler.accepted.qsize() == 0
