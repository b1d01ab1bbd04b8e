"""The flood throttle of the SMTP edge: a token bucket per envelope sender and per client.

One sender (or one client address) flooding gets `451 4.7.1` once its bucket is empty,
and keeps its place: a bucket refills evenly, so the sender's MTA retries and gets
through at the configured rate. Other senders have their own buckets and are never
slowed. Nothing waits: a refusal is as fast as an acceptance.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Literal

from maild.clock import Clock
from maild.config import SmtpSettings

__all__ = ["Throttle"]

# Distinct keys remembered per bucket set. A sender not seen for a whole window has a
# full bucket, the same as one never seen, so forgetting the least recently seen costs
# nothing unless more than this many keys are busy within one window; then the client
# bucket (if on) still holds. Measured: 50,000 keys of the longest sender allowed take
# about 28 MB.
MAX_KEYS: Final = 50_000

Which = Literal["sender", "client"]


class _Buckets:
    def __init__(self, capacity: int, window: float, max_keys: int) -> None:
        self._capacity = float(capacity)
        self._rate = capacity / window  # tokens per second
        self._max_keys = max_keys
        # key -> (tokens, at), least recently seen first. An OrderedDict: a plain dict
        # slows down when it is emptied from the front over and over.
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def level(self, key: str, now: float) -> float:
        state = self._state.get(key)
        if state is None:
            return self._capacity
        tokens, at = state
        return min(self._capacity, tokens + max(now - at, 0.0) * self._rate)

    def seen(self, key: str) -> None:
        """Mark `key` most recently seen: a refused flooder is the last to be forgotten."""
        if key in self._state:
            self._state.move_to_end(key)

    def take(self, key: str, now: float) -> None:
        self._state[key] = (self.level(key, now) - 1.0, now)
        self._state.move_to_end(key)
        while len(self._state) > self._max_keys:
            self._state.popitem(last=False)


class Throttle:
    """Per envelope sender and per client address; either limit may be off (0)."""

    def __init__(
        self,
        *,
        per_sender: int,
        per_client: int,
        window: float,
        clock: Clock,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._clock = clock
        self._senders = _Buckets(per_sender, window, max_keys) if per_sender else None
        self._clients = _Buckets(per_client, window, max_keys) if per_client else None

    @classmethod
    def of(cls, smtp: SmtpSettings, clock: Clock) -> Throttle:
        return cls(
            per_sender=smtp.max_mails_per_sender,
            per_client=smtp.max_mails_per_client,
            window=smtp.throttle_window,
            clock=clock,
        )

    def admit(self, sender: str, client: str) -> Which | None:
        """Count one mail from `sender` (the MAIL FROM address, '' for bounces) sent by
        `client`; or, if either is over its rate, count nothing and say which."""
        now = self._clock.now().timestamp()
        checks: list[tuple[Which, _Buckets, str]] = []
        if self._senders is not None:
            # RFC 5321 paths stop at 256 octets; longer ones would only cost memory.
            checks.append(("sender", self._senders, sender.strip().lower()[:256]))
        if self._clients is not None:
            checks.append(("client", self._clients, client))
        for which, buckets, key in checks:
            if buckets.level(key, now) < 1.0:
                buckets.seen(key)
                return which
        for _, buckets, key in checks:
            buckets.take(key, now)
        return None
