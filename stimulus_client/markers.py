"""Flip-locked event outputs: an LSL marker outlet and an optional TTL word (parallel or serial port).

Both are called from ``win.callOnFlip``, i.e. right after the flip that shows (or removes) an image, so
they must be quick and must never raise into the frame loop: a failing output is logged once and the
report says ``marker_sent = False``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("snslab.display")

MARKER_STREAM = "snslab-markers"


def marker_text(presentation_id: str) -> str:
    return f"pres:{presentation_id}"


class MarkerOutlet:
    """LSL string marker stream ``snslab-markers`` (irregular rate, one channel); ``source_id`` is the client
    id so a recorder can tell displays apart and re-attach after a restart."""

    def __init__(self, client_id: str):
        import pylsl  # display extra; LSLAPICFG must be set before the first pylsl object

        self._lsl = pylsl
        info = pylsl.StreamInfo(MARKER_STREAM, "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string, client_id)
        info.desc().append_child_value("software", "snslab-display")
        self.outlet = pylsl.StreamOutlet(info)
        self._failed = False

    def clock(self) -> float:
        return self._lsl.local_clock()

    def push(self, text: str, timestamp: float) -> bool:
        try:
            self.outlet.push_sample([text], timestamp)
            return True
        except Exception as e:  # never break the frame loop
            if not self._failed:
                log.error("LSL marker failed (%s); further failures are not logged", e)
                self._failed = True
            return False

    def close(self) -> None:
        self.outlet = None


class TTL:
    """A TTL word on a parallel port (``parallel:0x378``) or a serial port (``serial:/dev/ttyUSB0[@baud]``,
    one byte per word). ``set(word)`` at onset, ``set(0)`` at offset."""

    def __init__(self, spec: str):
        kind, _, where = spec.partition(":")
        self.spec = spec
        self._failed = False
        if kind == "parallel":
            from psychopy import parallel  # needs the port driver on the rig

            self._port = parallel.ParallelPort(address=int(where, 0))
            self._write = self._port.setData
        elif kind == "serial":
            try:
                import serial  # pyserial
            except ImportError as e:
                raise RuntimeError("--ttl serial:...: pyserial is not installed (pip install pyserial)") from e
            device, _, baud = where.partition("@")
            self._port = serial.Serial(device, baudrate=int(baud or 115200), timeout=0, write_timeout=0)
            self._write = lambda word: self._port.write(bytes([word & 0xFF]))
        else:
            raise ValueError(f"--ttl: unknown kind {kind!r} (allowed: parallel:ADDRESS, serial:DEVICE[@BAUD])")

    def set(self, word: int) -> bool:
        try:
            self._write(word)
            return True
        except Exception as e:
            if not self._failed:
                log.error("TTL %s failed (%s); further failures are not logged", self.spec, e)
                self._failed = True
            return False

    def close(self) -> None:
        close = getattr(self._port, "close", None)
        if close:
            close()
