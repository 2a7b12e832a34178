"""The stimulus store: images kept once by content hash, as BYTEA rows or as content-addressed files."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server.db.records import GenerationImage, StorageError
from server.db.repo_base import G, P, ST, RepositoryBase, _hex


class StimulusStore(RepositoryBase):
    """Writes new images (``_store_stimuli``) and reads them back by generation or by hash."""

    def generation_images(
        self, session_id: uuid.UUID, index: int, kinds: Iterable[str] | None = None
    ) -> list[GenerationImage]:
        """PNG bytes of a generation's active presentations, in batch order."""
        q = (
            sa.select(P.c.id, P.c.order_in_batch, P.c.kind, ST.c.sha256, ST.c.data, ST.c.path)
            .join(G, G.c.id == P.c.generation_id)
            .join(ST, ST.c.id == P.c.stimulus_id)
            .where(G.c.session_id == session_id, G.c.index == index, P.c.superseded.is_(False))
            .order_by(P.c.order_in_batch)
        )
        if kinds is not None:
            q = q.where(P.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        cache: dict[bytes, bytes] = {}
        out = []
        for r in rows:
            key = bytes(r.sha256)
            if key not in cache:
                cache[key] = self._image_bytes(r.data, r.path, key)
            out.append(GenerationImage(r.id, r.order_in_batch, r.kind, key.hex(), cache[key]))
        return out

    def stimulus_images(self, sha256_hex: Iterable[str]) -> dict[str, bytes]:
        """PNG bytes by content hash."""
        keys = [bytes.fromhex(h) for h in set(sha256_hex)]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ST.c.sha256, ST.c.data, ST.c.path).where(ST.c.sha256.in_(keys))).all()
        return {_hex(r.sha256): self._image_bytes(r.data, r.path, bytes(r.sha256)) for r in rows}

    def _store_stimuli(self, conn: Connection, images: list[dict[str, Any]]) -> dict[bytes, int]:
        """Insert images not stored yet (by content hash); return {sha256: stimulus id}."""
        keys = [im["sha256"] for im in images]
        rows = conn.execute(sa.select(ST.c.sha256, ST.c.id).where(ST.c.sha256.in_(keys))).all()
        known = {bytes(k): v for k, v in rows}
        new = [im for im in images if im["sha256"] not in known]
        if new:
            paths = [self._write_stimulus_file(im["sha256"], im["png"]) if self.stimulus_dir else None for im in new]
            # one statement with binary array parameters (PNG bytes are not text-escaped on the way)
            conn.exec_driver_sql(
                "INSERT INTO stimuli (sha256, height, width, nbytes, data, path)"
                " SELECT * FROM unnest(%(sha)b::bytea[], %(h)s::int4[], %(w)s::int4[], %(n)s::int4[],"
                " %(data)b::bytea[], %(path)s::text[]) ON CONFLICT (sha256) DO NOTHING",
                {
                    "sha": [im["sha256"] for im in new],
                    "h": [im["height"] for im in new],
                    "w": [im["width"] for im in new],
                    "n": [len(im["png"]) for im in new],
                    "data": [None if path else im["png"] for im, path in zip(new, paths)],
                    "path": paths,
                },
            )
            rows = conn.execute(
                sa.select(ST.c.sha256, ST.c.id).where(ST.c.sha256.in_([im["sha256"] for im in new]))
            ).all()
            known.update({bytes(k): v for k, v in rows})
        return known

    def _write_stimulus_file(self, sha: bytes, png: bytes) -> str:
        """Content-addressed file, written atomically and flushed to disk before the row is committed."""
        h = sha.hex()
        rel = f"{h[:2]}/{h}.png"
        target = self.stimulus_dir / rel
        if target.exists() and target.stat().st_size == len(png):
            return rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(png)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return rel

    def _image_bytes(self, data: bytes | None, path: str | None, sha: bytes) -> bytes:
        if data is not None:
            return bytes(data)
        if self.stimulus_dir is None:
            raise StorageError(f"stimulus {sha.hex()} is stored as a file but no stimulus folder is configured")
        png = (self.stimulus_dir / path).read_bytes()
        if hashlib.sha256(png).digest() != sha:
            raise StorageError(f"stimulus file {path} does not match its content hash")
        return png
