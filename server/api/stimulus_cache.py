"""Stimulus PNGs kept in memory (content-addressed, so never stale): when ten viewers fetch the images of a
new generation, the database is asked once. The push producer warms it with each new generation's images."""

from __future__ import annotations

import threading
from collections import OrderedDict


class StimulusCache:
    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            png = self._items.get(sha256)
            if png is not None:
                self._items.move_to_end(sha256)
            return png

    def put(self, sha256: str, png: bytes) -> None:
        with self._lock:
            if sha256 in self._items or len(png) > self.max_bytes:
                return
            self._items[sha256] = png
            self._bytes += len(png)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)

    def warm(self, repo, hashes) -> None:
        """Fetch the ones not cached yet, in one query."""
        missing = [h for h in dict.fromkeys(hashes) if self.get(h) is None]
        if missing:
            for h, png in repo.stimulus_images(missing).items():
                self.put(h, png)


def stimulus_cache(app) -> StimulusCache:
    cache = getattr(app.state, "stimulus_cache", None)
    if cache is None:
        cache = app.state.stimulus_cache = StimulusCache()
    return cache
