"""Reference uploads: the only way (besides files an administrator puts in the server's reference folder)
to give a session a reference image or code. ``reference.path`` then names the stored file."""

from __future__ import annotations

import hashlib
import io

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from ..deps import Operator, RequiredServiceDep

router = APIRouter(prefix="/references", tags=["references"])
MAX_BYTES = 32 << 20


class ReferenceOut(BaseModel):
    path: str
    bytes: int


@router.post("", response_model=ReferenceOut, status_code=201, dependencies=[Operator],
             summary="Upload a reference image (PNG/JPEG) or code (.npy)")
async def upload(request: Request, service: RequiredServiceDep,
                 kind: str = Query(..., pattern="^(image|code)$", description="image | code")) -> ReferenceOut:
    """The request body is the file itself (at most 32 MiB); answers the name to put in reference.path."""
    if service.reference_dir is None:
        raise HTTPException(503, "this server has no reference folder")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            raise HTTPException(413, f"body: more than {MAX_BYTES} bytes (allowed: up to 32 MiB)")
    if kind == "code":
        import numpy as np

        try:
            np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise HTTPException(400, f"body: not a .npy array ({str(err).splitlines()[0][:100]})") from None
        suffix = ".npy"
    else:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(body)) as im:
                im.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds on bad input
            raise HTTPException(400, f"body: not an image ({str(err).splitlines()[0][:100]})") from None
        suffix = ".png" if body[:8] == b"\x89PNG\r\n\x1a\n" else ".img"
    name = hashlib.sha256(body).hexdigest()[:32] + suffix
    service.reference_dir.mkdir(parents=True, exist_ok=True)
    (service.reference_dir / name).write_bytes(body)
    return ReferenceOut(path=name, bytes=len(body))
