"""An independent, deliberately naive PixelRTS v2 writer built straight from PIXELRTS_V2.md with PIL
and the scalar d2xy — the way the Geometry OS tools do it — so our decoder is tested against
images that our encoder did not produce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin


def spec_d2xy(n: int, d: int) -> tuple[int, int]:
    x = y = 0
    t = d
    s = 1
    while s < n:
        rx = (t >> 1) & 1
        ry = (t ^ rx) & 1
        if ry == 0:
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x += s * rx
        y += s * ry
        t >>= 2
        s *= 2
    return x, y


def write_spec_image(path: Path, data: bytes, n: int, *, extra: dict[str, Any] | None = None,
                     embed: bool = True, sidecar_name: str | None = None, meta_override: dict[str, Any] | None = None) -> dict[str, Any]:
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    px = img.load()
    padded = data + b"\0" * (-len(data) % 4)
    for i in range(len(padded) // 4):
        x, y = spec_d2xy(n, i)
        px[x, y] = tuple(padded[4 * i : 4 * i + 4])
    meta: dict[str, Any] = {
        "format": "PixelRTS-2.0",
        "format_version": 2,
        "grid_size": n,
        "encoding": {"type": "RGBA-dense", "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"},
        "offsets": {},
        "hashes": {},
        "encoding_mode": "RGBA-dense",
    }
    meta.update(extra or {})
    meta["data_hash"] = hashlib.sha256(data).hexdigest()
    meta["data_size"] = len(data)
    meta.update(meta_override or {})
    info = PngImagePlugin.PngInfo()
    if embed:
        info.add_text("PixelRTS", "PixelRTS" + json.dumps(meta, separators=(",", ":")))
    img.save(path, "PNG", pnginfo=info)
    if sidecar_name:
        (path.parent / sidecar_name).write_text(json.dumps(meta, indent=2))
    return meta
