"""Who may talk to the server: ZeroMQ CURVE (encryption + key authentication) with a ZAP handler that
accepts only listed client keys, each bound to one role and one client id.

A key folder (``snslab keys init DIR``) holds::

    server.key, server.key_secret            the server's key pair (the secret stays on the server)
    display-1.key, display-1.key_secret      one pair per client (its secret goes to that rig PC only)
    bridge-1.key, bridge-1.key_secret
    clients.txt                              the listing: "<role> <client id> <public key>" per line

The server loads ``server.key_secret`` and ``clients.txt``; a client loads ``server.key`` and its own
``<client id>.key_secret``. The ZAP handler refuses unlisted keys during the handshake (the client gets no
welcome and no data; nothing it sends reaches the server) and hands every accepted connection the
User-Id ``"<role>:<client id>"``, which the server checks on every message: a connection may only use the
client id and the role its key is bound to (a display key cannot send counts or act as a bridge, a
bridge key cannot take a display's id and receive its stimuli).

    keys = ServerKeys.load("keys/")                 # server
    ClientKeys.load("keys/", "display-1")           # display PC (needs server.key + its own secret)
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("snslab.wire.auth")

LISTING = "clients.txt"
ROLES = ("display", "bridge", "monitor")
_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class KeyError_(ValueError):
    """A key folder or listing that cannot be used; the message is one line naming the file."""


def _check_id(client_id: str) -> str:
    if not _ID.match(client_id) or client_id in ("server",):
        raise KeyError_(f"client id {client_id!r}: use 1-128 of A-Z a-z 0-9 _ . : / - (not 'server')")
    return client_id


def read_listing(path: Path) -> dict[bytes, tuple[str, str]]:
    """``clients.txt`` -> {Z85 public key: (role, client id)}. One key per client id and per key."""
    out: dict[bytes, tuple[str, str]] = {}
    ids: set[str] = set()
    if not path.is_file():
        raise KeyError_(f"{path}: no client listing (run `snslab keys init {path.parent}`)")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):  # whole-line comments only: Z85 keys may contain '#'
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ROLES or len(parts[2]) != 40:
            raise KeyError_(f"{path}:{n}: expected '<role> <client id> <40-char public key>' "
                            f"with role one of {', '.join(ROLES)}")
        role, cid, key = parts[0], _check_id(parts[1]), parts[2].encode()
        if key in out or cid in ids:
            raise KeyError_(f"{path}:{n}: client id {cid!r} or its key is listed twice")
        out[key] = (role, cid)
        ids.add(cid)
    return out


def _pair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def add_client(folder: Path, role: str, client_id: str) -> Path:
    """Make a key pair for one client and list it; returns the secret file to copy to that machine."""
    folder = Path(folder)
    if role not in ROLES:
        raise KeyError_(f"role {role!r}: allowed {', '.join(ROLES)}")
    _check_id(client_id)
    listing = folder / LISTING
    current = read_listing(listing) if listing.exists() else {}
    if any(cid == client_id for _, cid in current.values()):
        raise KeyError_(f"{listing}: client id {client_id!r} is already listed")
    public, secret = _pair(folder, client_id)
    key, _ = zmq.auth.load_certificate(str(public))
    with open(listing, "a") as f:
        f.write(f"{role} {client_id} {key.decode()}\n")
    return secret


def init_keys(folder: Path, displays=("display-1",), bridges=("bridge-1",)) -> list[Path]:
    """A new key folder: the server's pair, one pair per display and bridge, and the listing."""
    folder = Path(folder)
    if (folder / "server.key_secret").exists():
        raise KeyError_(f"{folder}: already holds server keys (add clients with `snslab keys add`)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LISTING).write_text("# role client-id public-key (Z85); one line per client the server accepts\n")
    paths = list(_pair(folder, "server"))
    for role, ids in (("display", displays), ("bridge", bridges)):
        for cid in ids:
            paths.append(add_client(folder, role, cid))
    return paths


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise KeyError_(f"{path}: no such key file")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise KeyError_(f"{path}: not a secret key file (*.key_secret)")
    return public, secret


class _Authenticator(ThreadAuthenticator):
    """ZAP: accept listed keys only; the connection's User-Id is "<role>:<client id>"."""

    def __init__(self, context, listing: dict[bytes, tuple[str, str]]):
        super().__init__(context)
        self.listing = listing
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.listing
        if not ok:
            self.refused += 1
            if self.refused <= 20 or self.refused % 1000 == 0:  # bounded log under a flood of strangers
                log.warning("refused a connection with an unlisted key %s (%d so far)", key.decode()[:8], self.refused)
        return ok

    def curve_user_id(self, client_public_key: bytes) -> str:
        role, cid = self.listing[z85.encode(client_public_key)]
        return f"{role}:{cid}"


@dataclass
class ServerKeys:
    """The server's secret key and the listing of the clients it accepts."""

    public: bytes
    secret: bytes
    listing: dict[bytes, tuple[str, str]]

    @classmethod
    def load(cls, folder: Path) -> "ServerKeys":
        folder = Path(folder)
        public, secret = _load_secret(folder / "server.key_secret")
        return cls(public, secret, read_listing(folder / LISTING))

    def apply(self, sock: zmq.Socket, context: zmq.Context) -> ThreadAuthenticator:
        """Make ``sock`` (before bind) a CURVE server behind a ZAP handler on ``context``."""
        auth = _Authenticator(context, self.listing)
        auth.start()
        auth.configure_curve_callback(domain="snslab", credentials_provider=auth)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"snslab")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        return auth


@dataclass
class ClientKeys:
    """A client's key pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, folder: Path, client_id: str, server_key: Path | None = None) -> "ClientKeys":
        """``folder/<client_id>.key_secret`` and ``folder/server.key`` (or ``server_key``)."""
        folder = Path(folder)
        public, secret = _load_secret(folder / f"{client_id}.key_secret")
        server_path = Path(server_key) if server_key else folder / "server.key"
        if not server_path.is_file():
            raise KeyError_(f"{server_path}: no server public key (copy server.key from the server's key folder)")
        server_public, _ = zmq.auth.load_certificate(str(server_path))
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def check_user(user_id: str | None, client_id: str, role: str | None) -> str | None:
    """Why a message on a connection authenticated as ``user_id`` may not act as ``client_id``/``role``,
    or None when it may."""
    if user_id is None:
        return "connection: not authenticated"
    bound_role, _, bound_id = user_id.partition(":")
    if bound_id != client_id:
        return f"sender: this key belongs to client {bound_id!r}, not {client_id!r}"
    if role is not None and role != bound_role:
        return f"role: this key belongs to a {bound_role}, not a {role}"
    return None


def is_loopback(bind: str) -> bool:
    """Whether a ZeroMQ bind/connect address stays on this machine (tcp://127.x, tcp://localhost,
    tcp://[::1], ipc://, inproc://)."""
    if bind.startswith(("ipc://", "inproc://")):
        return True
    host = bind.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"
