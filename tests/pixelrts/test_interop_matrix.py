"""Every kind of file Geometry OS's encoder ships (PIXELRTS_V2.md §2–§6), written by the independent
writer and opened by our `validate`, `decode --verify` and `register`; our pixels must be theirs.

30 kinds: 5 contents (a kernel-like binary; a WebAssembly module in code mode; a non-WASM input in code
mode; their converter's segments, without ``start``; a tiny input on the older writers' grid) × 3
compressions (none, zlib, "zstd-h5" — zlib bytes under the zstd label, what their encoder writes with
zstandard installed) × 2 containers (the tEXt chunk alone; the converter's tEXt + PixelRTS-Blueprint
chunk + ``<image>.meta.json`` sidecar with ``user_metadata``). Issue 14 counted 20/30 opening before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from healing.pixelrts import read_image

from .geometry_writer import LOOP_WASM, write_geometry

KERNEL = b"".join(hashlib.sha256(b"k%d" % i).digest() + b"\x00" * 32 + b"boot: init %04d\n" % i for i in range(90))
NOT_WASM = b"#!/bin/sh\n" + b"echo code mode input that is not WebAssembly\n" * 20
TINY = b"13 bytes here"
SEGMENTED = KERNEL[:2000] + NOT_WASM
CONTENTS = {
    "kernel": (KERNEL, {"mode": "standard", "caller": {"type": "kernel", "name": "vmlinuz", "version": "6.1"}}),
    "wasm": (LOOP_WASM, {"mode": "code", "caller": {"type": "wasm", "name": "add.wasm"}}),
    "code-not-wasm": (NOT_WASM, {"mode": "code", "caller": {"type": "script"}}),
    "segments": (SEGMENTED, {"mode": "standard", "caller": {"type": "os", "segments": ["kernel", "initrd"]},
                             "converter_segments": {
                                 "kernel": {"type": "kernel", "size": 2000, "sha256": hashlib.sha256(KERNEL[:2000]).hexdigest()},
                                 "initrd": {"type": "initrd", "size": len(NOT_WASM), "sha256": hashlib.sha256(NOT_WASM).hexdigest()}}}),
    "tiny-legacy-grid": (TINY, {"mode": "standard", "legacy_grid": True}),
}
COMPRESSIONS = {"none": None, "zlib": "zlib", "zstd-h5": "zstd-h5"}
CONTAINERS = {"text": {}, "converter": {"sidecar": True, "blueprint": True}}
COMMANDS = ("validate", "decode --verify", "register", "pixels")


def kinds() -> list[str]:
    return [f"{c}/{z}/{k}" for c in CONTENTS for z in COMPRESSIONS for k in CONTAINERS]


def write_kind(root: Path, kind: str) -> tuple[Path, bytes, np.ndarray]:
    content, compression, container = kind.split("/")
    data, options = CONTENTS[content]
    path = root / (kind.replace("/", "_") + ".rts.png")
    written = write_geometry(path, data, compression=COMPRESSIONS[compression], **options, **CONTAINERS[container])
    n = written.meta["grid_size"]
    return path, data, np.array(written.pixels, dtype=np.uint8).reshape(n, n, 4)


def _cli(*argv: str) -> int:
    from healing import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return cli.main(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)


def open_kind(root: Path, kind: str) -> dict[str, bool]:
    """Which of our commands open the file (exit 0 and, for decode, the exact input bytes), and whether
    the pixels we decode are the ones their writer laid out."""
    path, data, their_pixels = write_kind(root, kind)
    out = root / (path.name + ".out")
    opened = {
        "validate": _cli("validate", str(path)) == 0,
        "decode --verify": _cli("decode", str(path), "--verify", "-o", str(out)) == 0 and out.read_bytes() == data,
        "register": _cli("register", str(path)) == 0,
    }
    opened["pixels"] = bool(np.array_equal(read_image(path).pixels, their_pixels))
    return opened


@pytest.fixture()
def _fresh_engines():
    from storage.engine import dispose_engines

    yield
    dispose_engines()


@pytest.mark.slow
def test_every_kind_of_their_files_opens(tmp_path: Path, _fresh_engines: None) -> None:
    results = {kind: open_kind(tmp_path, kind) for kind in kinds()}
    failing = {kind: [c for c in COMMANDS if not ok[c]] for kind, ok in results.items() if not all(ok.values())}
    assert len(results) == 30
    assert failing == {}


def test_a_zstd_h5_converter_file_opens_in_every_command(tmp_path: Path, _fresh_engines: None) -> None:
    """The quick subset: the kind issue 14 found refused everywhere (9/9 corrupted before)."""
    assert open_kind(tmp_path, "segments/zstd-h5/converter") == dict.fromkeys(COMMANDS, True)
