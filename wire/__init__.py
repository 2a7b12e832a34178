"""snslab wire protocol: one envelope, multipart framing and a reliability layer over ZeroMQ.

Depends only on numpy, pydantic and pyzmq, so the display PC and the bridge PC can use it without the
server's stack. See docs/protocol.md.
"""

from wire.ledger import PresentationLedger
from wire.messages import (
    LIMITS,
    PAYLOADS,
    PROTOCOL_VERSION,
    RELIABLE_TYPES,
    Ack,
    Control,
    CountsBatch,
    CountsItem,
    Envelope,
    Error,
    Heartbeat,
    Hello,
    ImageSpec,
    Limits,
    Nack,
    Presentation,
    PresentationReport,
    ProtocolError,
    StimulusBatch,
    Welcome,
    blob_to_image,
    decode,
    encode,
    image_to_blob,
)
from wire.units import unit_key, unit_name
from wire.transport import ClientInfo, Peer, Received, Reject, ServerEndpoint, Timing

__all__ = [
    "LIMITS", "PAYLOADS", "PROTOCOL_VERSION", "RELIABLE_TYPES", "Ack", "ClientInfo", "Control", "CountsBatch",
    "CountsItem", "Envelope", "Error", "Heartbeat", "Hello", "ImageSpec", "Limits", "Nack", "Peer",
    "Presentation", "PresentationLedger", "PresentationReport", "ProtocolError", "Received", "Reject",
    "ServerEndpoint", "StimulusBatch", "Timing", "Welcome", "blob_to_image", "decode", "encode",
    "image_to_blob", "unit_key", "unit_name",
]  # fmt: skip
