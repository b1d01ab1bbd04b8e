"""A loopback OAuth2 provider: a token endpoint and the introspection endpoint Dovecot asks.

`/token` answers the refresh-token grant (RFC 6749 section 6) for one client, and rotates
refresh tokens as Microsoft 365 does: the spent one stops working. `/introspect` (RFC 7662)
tells Dovecot whether an access token is active, and whose it is. Real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from typing import Any, cast

CLIENT_ID = "maild-test"
CLIENT_SECRET = "client-secret"
STATIC_TOKEN = "good-token"  # always active: for the token_command tests


class Provider:
    def __init__(self, username: str) -> None:
        self.username = username
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.provider = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.access: set[str] = {STATIC_TOKEN}
            self.refresh: set[str] = set()
            # Every form posted to /token, in order.
            self.requests: list[dict[str, str]] = []
            self.expires_in = 3600
            self.refresh_expires_in: int | None = None
            self._issued = 0

    def start(self) -> Provider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def add_refresh_token(self, token: str) -> None:
        with self._lock:
            self.refresh.add(token)

    def token_requests(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.requests)

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(form)
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return 401, {"error": "invalid_client"}
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            spent = form.get("refresh_token", "")
            if spent not in self.refresh:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "AADSTS70008: The refresh token has expired.\r\n"
                    "Trace ID: 0000\r\nCorrelation ID: 0000",
                }
            self._issued += 1
            access, rotated = f"at-{self._issued}", f"rt-{self._issued}"
            self.access.add(access)
            self.refresh.discard(spent)
            self.refresh.add(rotated)
            answer: dict[str, Any] = {
                "token_type": "Bearer",
                "access_token": access,
                "expires_in": self.expires_in,
                "refresh_token": rotated,
            }
            if self.refresh_expires_in is not None:
                answer["refresh_token_expires_in"] = self.refresh_expires_in
            return 200, answer

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            if form.get("token") in self.access:
                return {"active": True, "username": self.username}
        return {"active": False}


class _Server(http.server.ThreadingHTTPServer):
    provider: Provider


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        provider = cast(_Server, self.server).provider
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        form = dict(urllib.parse.parse_qsl(body))
        if self.path == "/token":
            status, answer = provider.token(form)
        else:
            status, answer = 200, provider.introspect(form)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""
