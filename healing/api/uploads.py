"""Uploaded files: size, PNG signature and declared pixels checked before anything parses them.

The body as a whole was already bounded by :mod:`healing.api.limits`; here each file is read with a
cap of ``dashboard.max_upload_mb`` + 1 byte, so a file over the limit is refused without holding more.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile

from healing.api.errors import ApiError
from healing.api.settings import ApiSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def read_upload(file: UploadFile, api: ApiSettings, what: str = "file") -> tuple[str, bytes]:
    """(safe file name, bytes) of one upload; 413 when it exceeds the per-file limit, 400 when empty."""
    from dashboard.upload import safe_filename

    data = await file.read(api.max_upload_bytes + 1)
    if len(data) > api.max_upload_bytes:
        raise ApiError(413, f"{what} {file.filename or ''} exceeds {api.max_upload_mb} MiB "
                            "(dashboard.max_upload_mb)".replace("  ", " "))
    if not data:
        raise ApiError(400, f"{what} {file.filename or ''} is empty".replace("  ", " "))
    return safe_filename(file.filename or "upload.png"), data


def png_problem(data: bytes, api: ApiSettings) -> tuple[int, str] | None:
    """(status, message) when ``data`` is not a PNG (400) or declares more pixels than allowed (413)."""
    if not data.startswith(PNG_SIGNATURE):
        return 400, "not a PNG file (PixelRTS images are PNGs: .rts.png)"
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        if width * height > api.max_upload_pixels:
            return 413, (f"the image is {width}×{height} pixels; uploads are limited to {api.max_upload_pixels} "
                         "pixels (dashboard.max_upload_pixels)")
    return None


def require_png(data: bytes, api: ApiSettings, name: str) -> None:
    problem = png_problem(data, api)
    if problem is not None:
        raise ApiError(problem[0], f"{name}: {problem[1]}")


@contextmanager
def temporary_file(name: str, data: bytes) -> Iterator[Path]:
    """``data`` written to a private temporary directory under ``name`` (removed afterwards)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="selfheal-api-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path


def hide_path(result: dict, temp_path: str, name: str) -> dict:
    """The temporary path means nothing to the client: show the upload's name instead."""
    result["image_path"] = name
    if isinstance(result.get("recommendation"), str):
        result["recommendation"] = result["recommendation"].replace(temp_path, name)
    for item in result.get("findings") or []:
        if isinstance(item.get("description"), str):
            item["description"] = item["description"].replace(temp_path, name)
    return result
