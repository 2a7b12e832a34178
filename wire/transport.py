"""Reliability in one place: ids, acknowledgements, bounded re-sends, heartbeats both ways, reconnects.

The public names live here; the parts are wire/reliability.py (timing, per-link state), wire/endpoint.py
(the shared poll loop), wire/peer.py (client side) and wire/server.py (server side).

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

from wire.endpoint import _Endpoint
from wire.peer import Peer
from wire.reliability import HELLO_FIRST, SOFTWARE, Handler, Received, Reject, Timing
from wire.server import ClientInfo, ServerEndpoint

__all__ = [
    "HELLO_FIRST", "SOFTWARE", "ClientInfo", "Handler", "Peer", "Received", "Reject", "ServerEndpoint", "Timing",
    "_Endpoint",
]  # fmt: skip
