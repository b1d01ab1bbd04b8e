"""An unreliable outbound relay for the chaos test: aiosmtpd on loopback that sometimes
answers 451 or drops the connection mid-DATA, and records what it accepted by Message-ID."""

from __future__ import annotations

import random
import threading
from collections import Counter
from email import message_from_bytes
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller

from tests.daemon import free_port


class FlakyHandler:
    def __init__(self, rng: random.Random, p_451: float, p_drop: float) -> None:
        self._rng = rng
        self._p_451 = p_451
        self._p_drop = p_drop
        self._lock = threading.Lock()
        # Message-ID -> times answered 250 (more than one is allowed: at-least-once).
        self.delivered: Counter[str] = Counter()
        self.answered_451 = 0
        self.dropped = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        roll = self._rng.random()
        if roll < self._p_drop:
            with self._lock:
                self.dropped += 1
            # The sender sees the connection die before any reply: it cannot know
            # whether the relay kept the mail, so it must try again.
            server.transport.close()
            return "421 4.3.0 gone"
        if roll < self._p_drop + self._p_451:
            with self._lock:
                self.answered_451 += 1
            return "451 4.3.0 try again later"
        mail = message_from_bytes(envelope.original_content, policy=default)
        with self._lock:
            self.delivered[str(mail["Message-ID"])] += 1
        return "250 2.0.0 OK"


class FlakySink:
    def __init__(self, rng: random.Random, p_451: float = 0.15, p_drop: float = 0.1) -> None:
        self.port = free_port()
        self.handler = FlakyHandler(rng, p_451, p_drop)
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> FlakySink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
