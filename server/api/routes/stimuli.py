"""Stimulus images by content hash (the same picture is stored once, whatever showed it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response

from ..deps import RepositoryDep
from ..stimulus_cache import stimulus_cache
from ..schemas import ErrorOut

router = APIRouter(tags=["stimuli"])

Sha256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="sha256 of the PNG bytes, lowercase hex")]


def stimulus_url(sha256: str) -> str:
    return f"/api/stimuli/{sha256}.png"


@router.get(
    "/stimuli/{sha256}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the PNG"}, 404: {"model": ErrorOut}},
)
def stimulus_png(sha256: Sha256, request: Request, repo: RepositoryDep) -> Response:
    """The PNG bytes of a stimulus; cached for good by browsers (the name is the content's hash)."""
    cache = stimulus_cache(request.app)
    png = cache.get(sha256)
    if png is None:
        png = repo.stimulus_images([sha256]).get(sha256)
        if png is None:
            raise HTTPException(404, f"no stimulus {sha256}")
        cache.put(sha256, png)
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=31536000, immutable"})
