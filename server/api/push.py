"""Server push for the dashboard: one producer per watched session, however many viewers watch it.

The producer asks the database one cheap question every ``interval_s`` (has anything of this session, or
the session list, changed? ``dashboard_queries.change_marker``) plus what the live loop knows; only when the
answer changes does it build the whole view once (status, generations, front, newest images, neuron health,
rig status, new events), serialise it once and hand the same text to every subscriber's queue. Ten viewers
cost the server what one costs, plus copying a string ten times.

Every message carries the whole current state except the event log, which is incremental; its SSE ``id`` is
the newest event id in it. A reconnecting EventSource sends that id back (``Last-Event-ID``) and gets the
current state at once plus every event it missed, so nothing is lost across a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any, Callable

log = logging.getLogger("snslab.push")

KEEPALIVE_S = 15.0
RIG_REFRESH_S = 5.0
QUEUE_MAX = 32
RECENT_EVENTS = 1000


def sse(data: str, *, event: str = "update", id: int | None = None, retry_ms: int | None = None) -> str:
    """One server-sent event in the text/event-stream format (data is one JSON line)."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    head += f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


class SessionFeed:
    """The single producer of one session's updates and its subscribers' queues."""

    def __init__(self, hub: "PushHub", session_id: uuid.UUID):
        self.hub = hub
        self.session_id = session_id
        self.subscribers: set[asyncio.Queue] = set()
        self.state: dict[str, Any] | None = None  # the latest view, without events
        self.parts: dict[str, str] = {}  # each part of the latest view, as JSON text
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.last_event_id = 0
        self.marker: tuple | None = None
        self.builds = 0  # whole views built (the benchmark's "updates")
        self.build_s = 0.0  # CPU seconds of the threads that built them
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.idle_since: float | None = None
        self.failures = 0

    # -- producer --------------------------------------------------------------------------------------
    async def run(self) -> None:
        last_rig = time.monotonic()
        while True:
            try:
                marker = await asyncio.to_thread(self.hub.marker, self.session_id)
                now = time.monotonic()
                if marker != self.marker:
                    await self._rebuild(marker)
                    last_rig = now
                elif now - last_rig >= RIG_REFRESH_S and self.subscribers:
                    await self._rebuild(marker, rig_only=True)
                    last_rig = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a moment: say so, keep trying, slower
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning("push feed %s (failure %d): %s", self.session_id, self.failures, exc)
                self._broadcast(sse(json.dumps({"detail": str(exc).splitlines()[0] if str(exc) else
                                                type(exc).__name__}), event="problem"))
                await asyncio.sleep(min(5.0, 0.25 * self.failures))
            else:
                self.failures = 0
            if not self.subscribers:
                self.idle_since = self.idle_since or time.monotonic()
                if time.monotonic() - self.idle_since > self.hub.linger_s:
                    self.hub.feeds.pop(self.session_id, None)
                    return
            else:
                self.idle_since = None
            await asyncio.sleep(self.hub.interval_s)

    async def _rebuild(self, marker: tuple, rig_only: bool = False) -> None:
        def work():
            t0 = time.thread_time()
            if rig_only and self.state is not None:
                out = self.state | self.hub.build_rig(self.session_id, self.state), []
            else:
                out = self.hub.build(self.session_id, self.last_event_id)
            return out, time.thread_time() - t0

        (self.state, events), cpu_s = await asyncio.to_thread(work)
        for e in events:
            self.events.append(e)
            self.last_event_id = max(self.last_event_id, e["id"])
        self.marker = marker
        self.builds += 1
        self.build_s += cpu_s
        parts = {k: json.dumps(v, default=str, separators=(",", ":")) for k, v in self.state.items()}
        changed = {k: v for k, v in parts.items() if self.parts.get(k) != v or k == "session_id"}
        self.parts = parts
        self.ready.set()
        self._broadcast(self._message(events, changed))

    def _message(self, events: list[dict[str, Any]], parts: dict[str, str] | None = None) -> str:
        """The whole view (``parts`` None) or only the parts that changed since the previous update
        (``"partial": true``; the page keeps the rest), with the events."""
        body = ",".join(f'"{k}":{v}' for k, v in (self.parts if parts is None else parts).items())
        partial = ',"partial":true' if parts is not None else ""
        body = "{" + body + partial + ',"events":' + json.dumps(events, default=str, separators=(",", ":")) + "}"
        return sse(body, id=self.last_event_id)

    def _broadcast(self, text: str) -> None:
        for q in list(self.subscribers):
            if q.full():  # a viewer that stopped reading: end its stream; it reconnects with Last-Event-ID
                while not q.empty():  # and gets the whole view and every event it missed
                    q.get_nowait()
                q.put_nowait(None)
                self.subscribers.discard(q)
                continue
            q.put_nowait(text)

    # -- subscribers -----------------------------------------------------------------------------------
    async def subscribe(self, after_event_id: int) -> tuple[asyncio.Queue, str]:
        """A queue for the updates to come, and the catch-up message: the current state plus the events
        after ``after_event_id``."""
        q: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAX)
        await self.ready.wait()
        # from here to subscribing nothing awaits, so no update falls between the catch-up and the queue
        self.subscribers.add(q)
        missed = [e for e in self.events if e["id"] > after_event_id]
        if after_event_id < (self.events[0]["id"] - 1 if self.events else self.last_event_id):
            # older than what the feed remembers: read the gap from the database (one query); an update
            # broadcast meanwhile may repeat some of these events (same ids)
            missed = await asyncio.to_thread(self.hub.events_after, self.session_id, after_event_id)
        return q, self._message(missed)

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)


class PushHub:
    """The feeds of one app. ``build(session_id, after_event_id) -> (state, new events)``, ``build_rig`` and
    ``marker`` are the synchronous database work (run in threads)."""

    def __init__(self, *, marker: Callable, build: Callable, build_rig: Callable, events_after: Callable,
                 interval_s: float = 0.25, linger_s: float = 30.0):
        self.marker, self.build, self.build_rig, self.events_after = marker, build, build_rig, events_after
        self.interval_s = interval_s
        self.linger_s = linger_s
        self.feeds: dict[uuid.UUID, SessionFeed] = {}

    def feed(self, session_id: uuid.UUID) -> SessionFeed:
        f = self.feeds.get(session_id)
        if f is None or f.task is None or f.task.done():
            f = self.feeds[session_id] = SessionFeed(self, session_id)
            f.task = asyncio.get_running_loop().create_task(f.run())
        return f

    async def stream(self, session_id: uuid.UUID, after_event_id: int, is_disconnected: Callable,
                     max_s: float = 300.0):
        """The text/event-stream of one viewer. It ends after ``max_s`` (the browser reconnects at once with
        Last-Event-ID and loses nothing), so a server shutting down never waits long for its viewers."""
        feed = self.feed(session_id)
        q, first = await feed.subscribe(after_event_id)
        started = time.monotonic()
        try:
            yield sse("{}", event="hello", retry_ms=1000)
            yield first
            while time.monotonic() - started < max_s:
                try:
                    text = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if await is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if text is None:  # it fell behind: the browser reconnects and catches up
                    return
                yield text
        finally:
            feed.unsubscribe(q)

    async def close(self) -> None:
        for f in list(self.feeds.values()):
            if f.task is not None:
                f.task.cancel()
        self.feeds.clear()
