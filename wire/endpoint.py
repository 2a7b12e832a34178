"""What the peer and the server endpoint share: the poll loop, the outbox for other threads, dispatch with
ack/dedupe, re-sends with backoff and the rate-limited rejection log (see wire.transport).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import Counter, deque
from typing import Callable

import zmq

from snslab_common.rejections import RejectionLog
from wire.messages import PAYLOADS, SILENT_TYPES, Envelope, Limits, Payload, ProtocolError, peek_id
from wire.reliability import Handler, Received, Reject, Timing, _Link, _Pending, log


class _Endpoint:
    """Shared machinery: socket + waker polling, outbox for other threads, dispatch with ack/dedupe,
    re-sends with backoff, rejection logging."""

    def __init__(self, *, name: str, limits: Limits, timing: Timing, context: zmq.Context | None):
        self.name = name
        self.limits = limits
        self.timing = timing
        self.ctx = context or zmq.Context.instance()
        self.stats: Counter[str] = Counter()
        self._handlers: dict[str, Handler] = {}
        self._outbox: deque[Callable[[], None]] = deque()
        self._queued_reliable = 0  # reliable messages handed to send() but not yet in a pending set
        self._queued_lock = threading.Lock()
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._waker_w.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(self._waker_r, zmq.POLLIN)
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._limiter = RejectionLog(log, name, burst=timing.log_burst, window_s=timing.log_window_s)
        self._closed = False
        self._user_id: str | None = None
        # A server answers a message for a session it has not opened (yet) with error{unknown_session}
        # instead of a final nack: the client keeps it and re-sends it later.
        self.holds_unknown_sessions = False
        self.on_give_up: Callable[[str, str], None] | None = None  # (message id, type)
        self.on_nack: Callable[[str, str, str], None] | None = None  # (message id, type, reason)

    # ---- public
    def on(self, type: str, handler: Handler) -> None:
        """Register the handler of one message type (application types only)."""
        if type not in PAYLOADS:
            raise ProtocolError("type", f"unknown message type {type!r} (allowed: {', '.join(sorted(PAYLOADS))})")
        if type in ("hello", "welcome", "heartbeat", "ack", "nack"):
            raise ProtocolError("type", f"{type} is handled by the transport itself")
        self._handlers[type] = handler

    def start(self) -> "_Endpoint":
        """Run the poll loop in a daemon thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"wire-{self.name}", daemon=True)
            self._thread.start()
        return self

    def poll_once(self, timeout_s: float = 0.05) -> None:
        """One loop iteration: wait up to ``timeout_s`` for input, handle it, send, re-send, heartbeat."""
        now = time.monotonic()
        wait = max(0.0, min(timeout_s, self._next_due(now) - now))
        try:
            events = dict(self._poller.poll(math.ceil(wait * 1000)))
        except zmq.ZMQError as e:  # socket replaced under us (client reconnect); try again next time
            log.debug("%s: poll failed: %s", self.name, e)
            events = {}
        if self._waker_r.fileno() in events or self._waker_r in events:
            try:
                while self._waker_r.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        if self._sock is not None and self._sock in events:
            for _ in range(1000):  # bounded, so timers still run under a flood
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._user_id = self._frame_user(frames)
                self._receive([f.buffer for f in frames])  # memoryviews: blobs without a copy
        while self._outbox:
            self._outbox.popleft()()
        self._tick(time.monotonic())

    def close(self, flush_s: float = 0.0) -> None:
        """Stop the loop (after trying for ``flush_s`` to get pending messages acknowledged) and close."""
        if self._closed:
            return
        if flush_s > 0:
            self.flush(flush_s)
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._closed = True
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._waker_r.close()
        self._waker_w.close()
        self._closed_hook()

    def _closed_hook(self) -> None:
        pass

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop's thread (thread-safe): how other threads touch what handlers own."""
        self._post(fn)

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending (acknowledged or given up). True when empty."""
        deadline = time.monotonic() + timeout_s
        while self.pending_count() and time.monotonic() < deadline:
            if self._thread is not None and self._thread.is_alive():
                time.sleep(0.01)
            else:
                self.poll_once(0.01)
        return self.pending_count() == 0

    def pending_count(self) -> int:
        """Reliable messages not yet acknowledged (including those still on their way to the loop)."""
        with self._queued_lock:
            queued = self._queued_reliable
        return queued + sum(len(link.pending) for link in self._links())

    # ---- for subclasses
    def _frame_user(self, frames: list) -> str | None:
        """The authenticated User-Id of a received message (CURVE servers; see wire/auth.py)."""
        return None

    def _links(self) -> list[_Link]:
        raise NotImplementedError

    def _receive(self, frames: list) -> None:
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        raise NotImplementedError

    def _next_due(self, now: float) -> float:
        due = now + self.timing.heartbeat_s / 4
        for link in self._links():
            for p in link.pending.values():
                due = min(due, p.due)
        return due

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(0.1)
            except Exception:  # the loop must survive anything a handler or a peer does
                log.exception("%s: error in the message loop (continuing)", self.name)
                time.sleep(0.01)

    def _wake(self) -> None:
        try:
            self._waker_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _post(self, fn: Callable[[], None]) -> None:
        self._outbox.append(fn)
        self._wake()

    def _post_message(self, env: Envelope, fn: Callable[[], None]) -> None:
        if env.reliable:
            with self._queued_lock:
                self._queued_reliable += 1

            def run() -> None:
                try:
                    fn()
                finally:
                    with self._queued_lock:
                        self._queued_reliable -= 1

            self._post(run)
        else:
            self._post(fn)

    def _envelope(self, type: str, payload: Payload | dict, session: str, n_blobs: int, reliable: bool | None):
        return Envelope.make(type, payload, session=session, sender=self.name, n_blobs=n_blobs, reliable=reliable)

    def _new_pending(self, env: Envelope, frames: list) -> _Pending:
        return _Pending(env.id, env.type, frames, timeout=self.timing.ack_timeout_s, due=time.monotonic())

    def _resend_due(self, link: _Link, now: float, send: Callable[[list], bool]) -> None:
        t = self.timing
        for p in list(link.pending.values()):
            if p.due > now:
                continue
            if p.attempts > t.max_retries:
                del link.pending[p.id]
                self.stats["gave_up"] += 1
                log.error(
                    "%s: gave up on %s %s after %d sends without an acknowledgement",
                    self.name, p.type, p.id, p.attempts,
                )  # fmt: skip
                if self.on_give_up:
                    self.on_give_up(p.id, p.type)
                continue
            if send(p.frames):
                self.stats["resent" if p.attempts else "sent_reliable"] += 1
                p.attempts += 1
                p.due = now + p.timeout
                p.timeout = min(p.timeout * t.backoff, t.max_ack_timeout_s)
            else:
                p.due = now + t.ack_timeout_s  # socket not ready; try again soon without spending a retry

    def _reject(self, err: ProtocolError, header, peer: str, reply: Callable[[str, dict], None]) -> None:
        """Log one line, count, and answer (nack when the id is readable) unless the message was itself
        a reply/heartbeat, so two broken peers cannot ping-pong complaints."""
        self.stats["rejected"] += 1
        mid, mtype = peek_id(header) if header is not None else (None, None)
        if self._limiter.allow(time.monotonic()):
            log.warning("%s: rejected %s from %s: %s", self.name, mtype or "message", peer or "?", err)
        if mtype in SILENT_TYPES:
            return
        reason = str(err)[:480]
        final = err.code == "bad_message" or (err.code == "unknown_session" and not self.holds_unknown_sessions)
        if final and (err.ref or mid):
            reply("nack", {"ack_of": err.ref or mid, "reason": reason})
        else:
            reply("error", {"code": err.code, "reason": reason, "ref": err.ref or mid})

    def _handle_reply(self, link: _Link, env: Envelope, peer: str) -> bool:
        """ack/nack/error/heartbeat; True when consumed."""
        if env.type == "ack":
            if link.pending.pop(env.payload.ack_of, None) is not None:
                self.stats["acked"] += 1
            return True
        if env.type == "nack":
            p = link.pending.pop(env.payload.ack_of, None)
            self.stats["nacked"] += 1
            log.error(
                "%s: %s refused %s %s: %s", self.name, peer, p.type if p else "message", env.payload.ack_of,
                env.payload.reason,
            )  # fmt: skip
            if p is not None and self.on_nack:
                self.on_nack(p.id, p.type, env.payload.reason)
            return True
        if env.type == "heartbeat":
            return True
        if env.type == "error":
            log.warning("%s: error from %s [%s]: %s", self.name, peer, env.payload.code, env.payload.reason)
            return False  # subclasses may react (hello_required)
        return False

    def _dispatch(self, link: _Link, env: Envelope, blobs: list, peer: str, reply: Callable[[str, dict], None]):
        """Hand an application message to its handler once; ack/nack reliable ones after it returns."""
        if env.reliable and env.id in link.handled:
            self.stats["duplicates"] += 1
            ok, reason = link.handled[env.id]
            reply("ack", {"ack_of": env.id}) if ok else reply("nack", {"ack_of": env.id, "reason": reason})
            return
        handler = self._handlers.get(env.type)
        if handler is None:
            reason = f"type: no handler for {env.type} messages on {self.name}"
            if self._limiter.allow(time.monotonic()):
                log.warning("%s: rejected %s from %s: %s", self.name, env.type, peer, reason)
            self.stats["rejected"] += 1
            if env.reliable:
                link.remember(env.id, False, reason)
                reply("nack", {"ack_of": env.id, "reason": reason})
            return
        try:
            handler(Received(env, blobs, peer))
        except Reject as r:
            reason = (str(r).splitlines() or [""])[0][:480] or "rejected"
            self.stats["rejected"] += 1
            log.warning("%s: refused %s %s from %s: %s", self.name, env.type, env.id, peer, reason)
            if env.reliable:
                link.remember(env.id, False, reason)
                reply("nack", {"ack_of": env.id, "reason": reason})
            return
        except Exception:
            # not acked: the sender re-sends (bounded), so a passing fault does not lose the message
            log.exception("%s: handler for %s %s from %s failed; not acknowledged", self.name, env.type, env.id, peer)
            self.stats["handler_errors"] += 1
            return
        self.stats["handled"] += 1
        if env.reliable:
            link.remember(env.id, True)
            reply("ack", {"ack_of": env.id})


# ================================================================================================ client
