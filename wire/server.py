"""The server side: one :class:`ServerEndpoint` (ROUTER) for every display and bridge.
"""

from __future__ import annotations

import errno
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import zmq

from wire.messages import LIMITS, SILENT_TYPES, Envelope, Limits, Payload, ProtocolError, decode, encode
from wire.endpoint import _Endpoint
from wire.reliability import HELLO_FIRST, Timing, _Link, log


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
