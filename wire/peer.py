"""The client side: a display or bridge process holds one :class:`Peer` (DEALER, identity = client id).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any, Callable, Sequence

import zmq

from wire.messages import LIMITS, Envelope, Limits, Payload, ProtocolError, decode, encode
from wire.endpoint import _Endpoint
from wire.reliability import SOFTWARE, Timing, _Link, log


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
        due = min(super()._next_due(now), self._link.last_hb_tx + self.timing.heartbeat_s)
        if self.state == "ready":  # the hello timer only runs while not connected (else it is always due: a busy loop)
            return due
        return min(due, self._last_hello + self.timing.heartbeat_s, now + 0.1)


# ================================================================================================ server
