"""Reliability in one place: ids, acknowledgements, bounded re-sends, heartbeats both ways, reconnects.

A display or bridge process holds a :class:`Peer` (ZeroMQ DEALER, identity = client id); the server holds
one :class:`ServerEndpoint` (ROUTER) for all of them. Both run a non-blocking poll loop, either in their
own thread (``start()``) or driven by the caller (``poll_once()``); ``send``/``send_to`` may be called from
any thread, handlers run in the loop's thread. Example (a display-side peer)::

    from wire.transport import Peer, ServerEndpoint

    server = ServerEndpoint("tcp://127.0.0.1:*", session="S1")
    server.on("presentation_report", lambda msg: print("report", msg.payload.presentation_id))
    server.start()
    peer = Peer(f"tcp://127.0.0.1:{server.port}", client_id="display-1", role="display")
    peer.on("stimulus_batch", lambda msg: print(len(msg.blobs), "images"))
    peer.start()
    assert peer.wait_connected(5.0) and peer.session == "S1"
    peer.close(); server.close()

Rules (docs/protocol.md has the full text):
- reliable messages (stimulus_batch, presentation_report, counts_batch, control) are kept until the
  receiver answers ack (handled) or nack (refused, never retried); re-sent after ``ack_timeout_s`` with
  exponential backoff, at most ``max_retries`` times while the peer is alive. While the peer is silent the
  re-sends pause and the count restarts when it is back, so a restart of either side loses nothing.
- the receiver acks only after its handler returned, handles each message id once (a re-sent copy is
  re-acked, not re-handled), nacks when the handler raises :class:`Reject`, and sends nothing when the
  handler crashed (so the sender retries).
- both sides send a heartbeat every ``heartbeat_s``; a side that hears nothing for
  ``heartbeat_s * heartbeat_misses`` declares the other dead. A client then re-creates its socket and
  repeats hello until a welcome arrives.
- every rejected message is logged as one line and answered with nack (id readable) or error.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import zmq

from wire.messages import (
    LIMITS,
    PAYLOADS,
    SILENT_TYPES,
    Envelope,
    Limits,
    Payload,
    ProtocolError,
    decode,
    encode,
    peek_id,
)

log = logging.getLogger("snslab.wire")

SOFTWARE = "snslab-wire/1"
HELLO_FIRST = "sender: unknown client, hello first"


@dataclass(frozen=True)
class Timing:
    """Intervals of the reliability layer (seconds). Tests shrink them; the defaults suit a lab LAN."""

    heartbeat_s: float = 1.0
    heartbeat_misses: int = 3
    ack_timeout_s: float = 0.5
    backoff: float = 2.0
    max_ack_timeout_s: float = 4.0
    max_retries: int = 5
    log_burst: int = 20  # rejection lines logged per log_window_s; a flooding peer's rest are summarised
    log_window_s: float = 10.0
    forget_after_s: float = 60.0  # a client silent this long is dropped from the registry (and its pending)

    @property
    def dead_after_s(self) -> float:
        return self.heartbeat_s * self.heartbeat_misses


@dataclass
class Received:
    """One accepted message as handed to a handler. ``peer`` is the client id (server side) or the
    server's sender id (client side)."""

    env: Envelope
    blobs: list[memoryview]
    peer: str

    @property
    def envelope(self) -> Envelope:
        return self.env

    @property
    def payload(self) -> Any:
        return self.env.payload

    @property
    def type(self) -> str:
        return self.env.type


class Reject(Exception):
    """Raise from a handler to refuse a message: the sender gets a nack with this one-line reason."""


Handler = Callable[[Received], None]


@dataclass
class _Pending:
    id: str
    type: str
    frames: list
    timeout: float
    due: float = 0.0
    attempts: int = 0


class _Link:
    """Reliability state toward one remote: liveness, un-acked messages, ids already handled."""

    HANDLED_MEMORY = 8192

    def __init__(self) -> None:
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.handled: OrderedDict[str, tuple[bool, str]] = OrderedDict()  # id -> (acked, nack reason)
        self.last_rx = -math.inf
        self.last_hb_tx = -math.inf

    def remember(self, mid: str, ok: bool, reason: str = "") -> None:
        self.handled[mid] = (ok, reason)
        while len(self.handled) > self.HANDLED_MEMORY:
            self.handled.popitem(last=False)

    def rearm(self, now: float) -> None:
        """The peer is back: re-send everything pending now, with a fresh retry budget."""
        for p in self.pending.values():
            p.due, p.attempts = now, 0


class _LogLimiter:
    """At most ``burst`` rejection lines per ``window_s``; the rest are counted and summarised."""

    def __init__(self, burst: int = 20, window_s: float = 10.0):
        self.burst, self.window_s = burst, window_s
        self.start, self.n, self.suppressed = -math.inf, 0, 0

    def allow(self, now: float) -> bool:
        if now - self.start > self.window_s:
            if self.suppressed:
                log.warning(
                    "suppressed %d further rejection messages in the last %.0f s", self.suppressed, self.window_s
                )
            self.start, self.n, self.suppressed = now, 0, 0
        self.n += 1
        if self.n > self.burst:
            self.suppressed += 1
            return False
        return True


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
        self._limiter = _LogLimiter(timing.log_burst, timing.log_window_s)
        self._closed = False
        self._user_id: str | None = None
        self.on_give_up: Callable[[str, str], None] | None = None  # (message id, type)
        self.on_nack: Callable[[str, str, str], None] | None = None  # (message id, type, reason)
        # A server answers a message for a session it has not opened (yet) with error{unknown_session}
        # instead of a final nack: the client keeps it and re-sends it later.
        self.holds_unknown_sessions = False

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


class Peer(_Endpoint):
    """Client side (display, bridge): a DEALER whose identity is ``client_id``.

    States: ``connecting`` (hello sent every heartbeat until a welcome), ``ready`` (welcomed; reliable
    messages flow), ``lost`` (server silent: socket re-created, hello repeated). The session id is adopted
    from the welcome unless ``session`` pins it (then the server refuses a mismatch).
    """

    def __init__(
        self,
        server: str,
        *,
        client_id: str,
        role: str,
        capabilities: dict[str, Any] | None = None,
        session: str = "",
        limits: Limits = LIMITS,
        timing: Timing = Timing(),
        context: zmq.Context | None = None,
        keys=None,
    ):
        """``keys``: a ``wire.auth.ClientKeys`` when the server uses CURVE (``snslab keys``)."""
        super().__init__(name=client_id, limits=limits, timing=timing, context=context)
        self.keys = keys
        self.server = server
        self.role = role
        self.capabilities = dict(capabilities or {})
        self.instance = uuid.uuid4().hex
        self.session = session
        self.pinned_session = session  # what hello carries: "" = adopt the server's session
        self.server_id: str | None = None
        self.server_instance: str | None = None
        self.state = "connecting"
        self.on_welcome: Callable[[Envelope, bool], None] | None = None  # (welcome, server_restarted)
        self.on_lost: Callable[[], None] | None = None
        self._link = _Link()
        self._last_hello = -math.inf
        self._ready = threading.Event()
        Envelope.make("hello", self._hello_payload(), session=session, sender=client_id)  # validate early
        self._connect()

    @property
    def connected(self) -> bool:
        return self.state == "ready"

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until welcomed (drives the loop itself when no thread was started)."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.is_set() and time.monotonic() < deadline:
            if self._thread is None:
                self.poll_once(0.02)
            else:
                self._ready.wait(0.02)
        return self._ready.is_set()

    def send(
        self,
        type: str,
        payload: Payload | dict,
        blobs: Sequence[Any] = (),
        *,
        reliable: bool | None = None,
        session: str | None = None,
    ) -> str:
        """Queue a message for the server (thread-safe); returns its id. Validation errors raise here.
        Reliable messages wait in the pending set until acknowledged, across reconnects."""
        sess = self.session if session is None else session
        if not sess:
            raise ProtocolError("session", "not known yet: wait for the server's welcome (wait_connected)")
        env = self._envelope(type, payload, sess, len(blobs), reliable)
        frames = encode(env, blobs, self.limits)
        self._post_message(env, lambda: self._enqueue(env, frames))
        return env.id

    # ---- internals
    def _links(self) -> list[_Link]:
        return [self._link]

    def _hello_payload(self) -> dict:
        return dict(
            role=self.role, client_id=self.name, instance=self.instance, software=SOFTWARE,
            capabilities=self.capabilities,
        )  # fmt: skip

    def _connect(self) -> None:
        if self._sock is not None:
            self._poller.unregister(self._sock)
            self._sock.close(linger=0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, self.name.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a connection that is not up
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.setsockopt(zmq.MAXMSGSIZE, self.limits.hard_frame_bytes)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        if self.keys is not None:
            self.keys.apply(s)
        s.connect(self.server)
        self._sock = s
        self._poller.register(s, zmq.POLLIN)

    def _send_frames(self, frames: list) -> bool:
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _reply(self, type: str, payload: dict) -> None:
        if not self.session:
            return
        env = self._envelope(type, payload, self.session, 0, False)
        self._send_frames(encode(env, (), self.limits))

    def _enqueue(self, env: Envelope, frames: list) -> None:
        if env.reliable:
            self._link.pending[env.id] = self._new_pending(env, frames)
            if self.state == "ready":
                self._resend_due(self._link, time.monotonic(), self._send_frames)
        elif self.state == "ready":
            self._send_frames(frames)
        else:
            log.debug("%s: dropped unreliable %s while not connected", self.name, env.type)

    def _send_hello(self, now: float) -> None:
        env = self._envelope("hello", self._hello_payload(), self.pinned_session, 0, False)
        if self._send_frames(encode(env, (), self.limits)):
            self._last_hello = now  # otherwise (connection not up yet) try again on the next tick

    def _receive(self, frames: list) -> None:
        header = frames[0] if frames else None
        peer = self.server_id or self.server
        try:
            env, blobs = decode(frames, self.limits)
            if env.type not in ("welcome", "error") and self.session and env.session != self.session:
                raise ProtocolError(
                    "session", f"unknown session {env.session!r} (this client is in {self.session!r})",
                    ref=env.id, code="unknown_session",
                )  # fmt: skip
            if env.type == "hello":
                raise ProtocolError("type", "a client does not accept hello", ref=env.id)
        except ProtocolError as e:
            self._reject(e, header, peer, self._reply)
            return
        now = time.monotonic()
        self._link.last_rx = now
        self.stats["received"] += 1
        if env.type == "welcome":
            self._on_welcome(env, now)
            return
        if self._handle_reply(self._link, env, peer):
            return
        if env.type == "error":
            if env.payload.code == "hello_required":
                self.state = "connecting"
                self._ready.clear()
                self._send_hello(now)
            elif env.payload.code == "unknown_session" and env.payload.ref in self._link.pending:
                p = self._link.pending[env.payload.ref]  # not open on the server yet: keep it, try later
                p.attempts, p.due = 0, now + self.timing.max_ack_timeout_s
            if "error" in self._handlers:
                self._dispatch(self._link, env, blobs, peer, self._reply)
            return
        self._dispatch(self._link, env, blobs, peer, self._reply)

    def _on_welcome(self, env: Envelope, now: float) -> None:
        w = env.payload
        if self.pinned_session and env.session != self.pinned_session:
            if self._limiter.allow(now):
                log.error(
                    "%s: the server runs session %r but this client serves only %r; not connecting",
                    self.name, env.session, self.pinned_session,
                )  # fmt: skip
            return
        restarted = self.server_instance is not None and w.server_instance != self.server_instance
        first = self.server_instance is None
        if restarted:
            log.warning("%s: the server (%s) restarted; re-sending what is pending", self.name, env.sender)
        if self.state != "ready" or restarted or env.session != self.session:
            log.info("%s: connected to %s, session %s", self.name, env.sender, env.session)
        self.server_id, self.server_instance, self.session = env.sender, w.server_instance, env.session
        if self.state != "ready" or restarted:
            self._link.rearm(now)
        self.state = "ready"
        self._ready.set()
        if self.on_welcome:
            self.on_welcome(env, restarted and not first)

    def _tick(self, now: float) -> None:
        t = self.timing
        if self.state == "ready" and now - self._link.last_rx > t.dead_after_s:
            self.state = "lost"
            self._ready.clear()
            self.stats["lost"] += 1
            log.warning("%s: server silent for %.1f s; reconnecting", self.name, now - self._link.last_rx)
            self._connect()
            if self.on_lost:
                self.on_lost()
        if self.state != "ready":
            if now - self._last_hello >= t.heartbeat_s:
                self._send_hello(now)
            return
        if now - self._link.last_hb_tx >= t.heartbeat_s:
            self._link.last_hb_tx = now
            self._reply("heartbeat", {"pending": len(self._link.pending)})
        self._resend_due(self._link, now, self._send_frames)

    def _next_due(self, now: float) -> float:
        due = super()._next_due(now)
        due = min(due, self._link.last_hb_tx + self.timing.heartbeat_s, self._last_hello + self.timing.heartbeat_s)
        return due if self.state == "ready" else min(due, now + 0.1)


# ================================================================================================ server


@dataclass
class ClientInfo:
    """What the server knows about one client. ``alive`` turns False after missed heartbeats."""

    client_id: str
    role: str | None = None
    instance: str | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    alive: bool = False
    hellos: int = 0
    link: _Link = field(default_factory=_Link, repr=False)

    def snapshot(self) -> "ClientInfo":
        return ClientInfo(self.client_id, self.role, self.instance, dict(self.capabilities), self.alive, self.hellos)


class ServerEndpoint(_Endpoint):
    """Server side: one ROUTER for all clients, which it tracks by id and role.

    ``on_hello(client, new_instance)`` runs on every hello (first contact, reconnect, restart); a
    ``new_instance`` means the client process restarted and lost everything: pending messages to its old
    instance are dropped and the application re-sends what is outstanding (see :mod:`wire.ledger`).
    Non-hello messages must carry a session in ``known_sessions`` (the current one and every earlier one
    this endpoint served).
    """

    def __init__(
        self,
        bind: str,
        *,
        session: str,
        server_id: str = "server",
        limits: Limits = LIMITS,
        timing: Timing = Timing(),
        context: zmq.Context | None = None,
        on_hello: Callable[[ClientInfo, bool], None] | None = None,
        on_disconnect: Callable[[ClientInfo], None] | None = None,
        keys=None,
    ):
        """``keys``: a ``wire.auth.ServerKeys`` (CURVE + ZAP: only listed clients, each bound to its id and
        role); None = no authentication (loopback, or ``--insecure``)."""
        self.keys = keys
        self._auth = None
        if keys is not None and context is None:
            context = zmq.Context()  # a ZAP handler is per context: this endpoint's own
            self._own_ctx = context
        super().__init__(name=server_id, limits=limits, timing=timing, context=context)
        self.holds_unknown_sessions = True
        Envelope.make("heartbeat", {}, session=session, sender=server_id)  # validates the ids
        self.session = session
        self.known_sessions: set[str] = {session}
        self.instance = uuid.uuid4().hex
        self.on_hello = on_hello
        self.on_disconnect = on_disconnect
        self._clients: dict[str, ClientInfo] = {}
        self._lock = threading.Lock()
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown identity -> error instead of a silent drop
        if keys is None:
            s.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted client with the same id takes over
        else:  # no taking over another key's id; dead connections are dropped by ZeroMQ heartbeats instead
            s.setsockopt(zmq.HEARTBEAT_IVL, int(timing.heartbeat_s * 1000))
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(timing.dead_after_s * 1000))
            self._auth = keys.apply(s, self.ctx)
        s.setsockopt(zmq.MAXMSGSIZE, limits.hard_frame_bytes)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.RCVHWM, 1000)
        s.bind(bind)
        self._sock = s
        self._poller.register(s, zmq.POLLIN)
        self.endpoint = s.getsockopt(zmq.LAST_ENDPOINT).decode()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def _frame_user(self, frames: list) -> str | None:
        if self.keys is None or len(frames) < 2:
            return None
        try:
            return frames[1].get("User-Id")
        except (zmq.ZMQError, AttributeError):
            return None

    def _closed_hook(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        own = getattr(self, "_own_ctx", None)
        if own is not None:
            own.destroy(linger=0)

    def clients(self, role: str | None = None, alive_only: bool = False) -> list[ClientInfo]:
        with self._lock:
            return [
                c.snapshot()
                for c in self._clients.values()
                if (role is None or c.role == role) and (c.alive or not alive_only)
            ]

    def send_to(
        self,
        client_id: str,
        type: str,
        payload: Payload | dict,
        blobs: Sequence[Any] = (),
        *,
        reliable: bool | None = None,
    ) -> str:
        """Queue a message for one client (thread-safe); returns its id. Reliable messages to a client that
        is not connected wait until it says hello with the same instance."""
        env = self._envelope(type, payload, self.session, len(blobs), reliable)
        frames = encode(env, blobs, self.limits)
        self._post_message(env, lambda: self._enqueue(client_id, env, frames))
        return env.id

    def set_session(self, session: str) -> None:
        """Switch to a new session (thread-safe): clients get a fresh welcome and adopt it."""
        Envelope.make("heartbeat", {}, session=session, sender=self.name)

        def apply() -> None:
            self.session = session
            self.known_sessions.add(session)
            for c in list(self._clients.values()):
                if c.alive:
                    self._welcome(c)

        self._post(apply)

    # ---- internals
    def _links(self) -> list[_Link]:
        with self._lock:
            return [c.link for c in self._clients.values()]

    def _client(self, client_id: str) -> ClientInfo:
        with self._lock:
            c = self._clients.get(client_id)
            if c is None:
                c = self._clients[client_id] = ClientInfo(client_id)
            return c

    def _send_frames(self, client_id: str, frames: list) -> bool:
        try:
            self._sock.send_multipart([client_id.encode(), *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == errno.EHOSTUNREACH:
                return False
            raise

    def _reply_to(self, client_id: str) -> Callable[[str, dict], None]:
        def reply(type: str, payload: dict) -> None:
            env = self._envelope(type, payload, self.session, 0, False)
            self._send_frames(client_id, encode(env, (), self.limits))

        return reply

    def _enqueue(self, client_id: str, env: Envelope, frames: list) -> None:
        c = self._client(client_id)
        if env.reliable:
            c.link.pending[env.id] = self._new_pending(env, frames)
            if c.alive:
                self._resend_due(c.link, time.monotonic(), lambda f: self._send_frames(client_id, f))
        elif c.alive:
            self._send_frames(client_id, frames)

    def _welcome(self, c: ClientInfo) -> None:
        payload = dict(
            server_instance=self.instance, heartbeat_s=self.timing.heartbeat_s,
            heartbeat_misses=self.timing.heartbeat_misses,
        )  # fmt: skip
        self._reply_to(c.client_id)("welcome", payload)

    def _receive(self, frames: list) -> None:
        ident_frame, frames = frames[0], frames[1:]
        try:
            client_id = bytes(ident_frame).decode()
        except UnicodeDecodeError:
            client_id = ""
        header = frames[0] if frames else None
        reply = self._reply_to(client_id) if client_id else (lambda *a: None)
        try:
            if not client_id:
                raise ProtocolError("sender", "connection identity is not a UTF-8 client id")
            env, blobs = decode(frames, self.limits)
            if env.sender != client_id:
                raise ProtocolError(
                    "sender", f"{env.sender!r} does not match the connection identity {client_id!r}", ref=env.id
                )
            if env.type == "hello" and env.payload.client_id != client_id:
                raise ProtocolError(
                    "payload.client_id", f"{env.payload.client_id!r} is not the sender {client_id!r}", ref=env.id
                )
            if env.session not in self.known_sessions and not (env.type == "hello" and not env.session):
                shown = ", ".join(sorted(self.known_sessions)[-3:])
                raise ProtocolError(
                    "session", f"unknown session {env.session!r} (known: {shown})", ref=env.id, code="unknown_session"
                )
            elif env.type == "welcome":
                raise ProtocolError("type", "a server does not accept welcome", ref=env.id)
            if self.keys is not None:
                from wire.auth import check_user

                why = check_user(self._user_id, client_id, env.payload.role if env.type == "hello" else None)
                if why is not None:
                    raise ProtocolError(why.split(":", 1)[0], why.split(": ", 1)[1], ref=env.id)
        except ProtocolError as e:
            self._reject(e, header, client_id, reply)
            return
        now = time.monotonic()
        self.stats["received"] += 1
        if env.type == "hello":
            self._on_hello(client_id, env, now)
            return
        with self._lock:
            c = self._clients.get(client_id)
        if c is None or c.role is None:
            self.stats["rejected"] += 1
            if self._limiter.allow(now):
                log.warning("%s: rejected %s from %s: %s", self.name, env.type, client_id, HELLO_FIRST)
            if env.type not in SILENT_TYPES:
                reply("error", {"code": "hello_required", "reason": HELLO_FIRST, "ref": env.id})
            return
        c.link.last_rx = now
        if not c.alive:  # it was declared dead but is talking again
            c.alive = True
            c.link.rearm(now)
            log.info("%s: client %s is back", self.name, client_id)
        if self._handle_reply(c.link, env, client_id) or env.type == "error":
            return
        self._dispatch(c.link, env, blobs, client_id, reply)

    def _on_hello(self, client_id: str, env: Envelope, now: float) -> None:
        h = env.payload
        c = self._client(client_id)
        new_instance = c.instance != h.instance
        if new_instance and c.instance is not None:
            log.warning(
                "%s: client %s restarted (new instance); dropping %d messages pending to the old one",
                self.name, client_id, len(c.link.pending),
            )  # fmt: skip
            c.link = _Link()
        elif not c.alive or new_instance:
            log.info("%s: client %s (%s) connected", self.name, client_id, h.role)
        c.role, c.instance, c.capabilities = h.role, h.instance, dict(h.capabilities)
        c.alive = True
        c.hellos += 1
        c.link.last_rx = now
        c.link.rearm(now)
        self._welcome(c)
        if self.on_hello:
            try:
                self.on_hello(c.snapshot(), new_instance)
            except Exception:
                log.exception("%s: on_hello for %s failed", self.name, client_id)

    def _tick(self, now: float) -> None:
        t = self.timing
        with self._lock:
            clients = list(self._clients.values())
        for c in clients:
            if not c.alive:
                if c.hellos and now - c.link.last_rx > max(t.forget_after_s, t.dead_after_s):
                    with self._lock:
                        self._clients.pop(c.client_id, None)
                    self.stats["forgotten"] += 1
                continue
            if now - c.link.last_rx > t.dead_after_s:
                c.alive = False
                self.stats["lost"] += 1
                log.warning(
                    "%s: client %s silent for %.1f s; marked disconnected", self.name, c.client_id, now - c.link.last_rx
                )
                if self.on_disconnect:
                    try:
                        self.on_disconnect(c.snapshot())
                    except Exception:
                        log.exception("%s: on_disconnect for %s failed", self.name, c.client_id)
                continue
            if now - c.link.last_hb_tx >= t.heartbeat_s:
                c.link.last_hb_tx = now
                self._reply_to(c.client_id)("heartbeat", {"pending": len(c.link.pending)})
            self._resend_due(c.link, now, lambda f, cid=c.client_id: self._send_frames(cid, f))
