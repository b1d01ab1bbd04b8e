"""The SMTP listener in-process on a loopback port, spooling into a test App's database.

For tests that need to control what the daemon wires around the listener (the throttle's
clock, the backpressure state) and count what it observed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from maild import spool
from maild.app import App
from maild.config import ListenerSettings
from maild.receive.smtp import Listener, serve
from maild.receive.throttle import Throttle
from maild.types import Envelope
from tests.daemon import free_port


class RunningListener:
    def __init__(self, port: int, observed: Counter[str]) -> None:
        self.port = port
        self.observed = observed


@contextmanager
def running_listener(
    app: App,
    *,
    accepting: Callable[[], bool] = lambda: True,
    on_spooled: Callable[[], None] = lambda: None,
) -> Iterator[RunningListener]:
    """Serve SMTP on 127.0.0.1 until the block ends; the throttle runs on `app.clock`."""
    loop = asyncio.new_event_loop()
    observed: Counter[str] = Counter()
    port = free_port()

    async def put(raw: bytes, envelope: Envelope) -> int:
        spool_id = await asyncio.to_thread(
            spool.put, app.db, raw, envelope, "smtp", app.clock.now()
        )
        on_spooled()
        return spool_id

    def observe(result: str) -> None:
        observed[result] += 1

    async def start() -> asyncio.AbstractServer:
        listener = Listener(
            app.settings,
            put,
            observe,
            throttle=Throttle.of(app.settings.smtp, app.clock),
            accepting=accepting,
        )
        return await serve(listener, ListenerSettings(host="127.0.0.1", port=port))

    thread = threading.Thread(target=loop.run_forever, name="test-smtp", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield RunningListener(port, observed)
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
