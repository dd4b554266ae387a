"""Interop with what Geometry OS really writes (issue 14, PIXELRTS_V2.md §3 and §6): files from an
independent writer (tests/pixelrts/geometry_writer.py) read by us, pixel for pixel, and files from our
`selfheal encode --segment … --compress …` read by an independent spec reader."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from healing import cli
from healing.errors import CorruptedError
from healing.pixelrts import _wasm, decode, encode, read_image, verify, write_image
from tests.conftest import ROOT, selfheal_cmd, subprocess_env

from .geometry_writer import (
    LOOP_WASM,
    code_stream,
    read_geometry,
    their_alpha,
    their_red,
    write_geometry,
)
from .spec_writer import write_spec_image

zstandard = pytest.importorskip("zstandard")  # a test extra (pyproject [test]); the zstd paths need it

WEBP_WASM = ROOT / ".venv/lib/python3.11/site-packages/playwright/driver/package/lib/webp_codec.wasm"
TEXTISH = b"".join(b"line %05d of a boot log: service ready\n" % i for i in range(120))
NOTE = ("payload labelled 'zstd-h5' holds a zlib stream (Geometry OS's encoder writes zlib under 'zstd-h5' "
        "when zstandard is installed); read as zlib")


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def _their_pixels(written) -> np.ndarray:
    n = written.meta["grid_size"]
    return np.array(written.pixels, dtype=np.uint8).reshape(n, n, 4)


# ---------------------------------------------------------------------------- "zstd-h5" over zlib

@pytest.mark.parametrize(("level", "header"), [(1, "7801"), (3, "785e"), (6, "789c"), (9, "78da")])
def test_zstd_h5_label_over_zlib_reads_as_zlib_with_a_note(tmp_path, level, header):
    path = tmp_path / "k.rts.png"
    written = write_geometry(path, TEXTISH, compression="zstd-h5", level=level)
    assert written.stream[:2].hex() == header  # what their encoder really stores under the zstd label
    image = read_image(path)
    assert np.array_equal(image.pixels, _their_pixels(written))
    assert image.stored_length == len(zlib.compress(TEXTISH, level))
    report = verify(path)
    assert report.ok is True and report.hash_verified is True and report.problems == []
    assert report.notes == [NOTE]
    assert decode(path, verify=True) == TEXTISH


def test_validate_cli_reports_the_label_note_and_exit_0(tmp_path, capsys):
    path = tmp_path / "k.rts.png"
    write_geometry(path, TEXTISH, compression="zstd-h5")
    assert cli.main(["validate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["valid"], out["problems"], out["notes"]) == ("valid", True, [], [NOTE])
    assert cli.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{path}: valid PixelRTS v2, {len(TEXTISH)} bytes, sha256 verified (note: {NOTE})")


def test_plain_zlib_label_has_no_note_and_real_zstd_under_a_zlib_label_is_read_as_zstd(tmp_path):
    plain = tmp_path / "z.rts.png"
    write_geometry(plain, TEXTISH, compression="zlib")
    assert verify(plain).notes == []
    comp = zstandard.ZstdCompressor(level=3).compress(TEXTISH)
    odd = tmp_path / "odd.rts.png"
    write_spec_image(odd, comp, 16, meta_override={
        "data_hash": hashlib.sha256(TEXTISH).hexdigest(), "data_size": len(TEXTISH), "encoded_size": len(comp),
        "compression": {"type": "zlib", "level": 6, "original_size": len(TEXTISH), "compressed_size": len(comp)}})
    report = verify(odd)
    assert report.ok is True
    assert report.notes == ["payload labelled 'zlib' holds a zstd stream (Geometry OS's encoder writes zlib under "
                            "'zstd-h5' when zstandard is installed); read as zstd"]


def test_a_compressed_label_over_bytes_that_are_neither_is_corruption(tmp_path):
    path = tmp_path / "raw.rts.png"
    write_spec_image(path, TEXTISH, 64, meta_override={"compression": {"type": "zstd-h5"}})
    report = verify(path)
    assert report.ok is False and report.hash_verified is False
    assert [p.message for p in report.problems] == [
        "compressed payload is damaged: labelled 'zstd-h5' but it starts with 6c 69 6e 65, neither a zlib header "
        "nor the zstd magic"]
    lzma = tmp_path / "lzma.rts.png"
    write_spec_image(lzma, TEXTISH, 64, meta_override={"compression": {"type": "lzma"}})
    assert [p.message for p in verify(lzma).problems] == [
        "unknown compression type 'lzma' in PixelRTS metadata, and the payload is neither a zlib nor a zstd stream"]


@pytest.mark.parametrize("kind", ["zlib", "zstd"])
def test_inflating_stays_bounded_by_the_declared_size(tmp_path, kind):
    bomb = bytes(8 << 20)
    comp = zlib.compress(bomb, 9) if kind == "zlib" else zstandard.ZstdCompressor(write_content_size=True).compress(bomb)
    assert len(comp) < 10_000
    path = tmp_path / "bomb.rts.png"
    # The zstd frame declares 8 MiB as its content size: the bound must hold all the same.
    write_spec_image(path, comp, 64, meta_override={
        "data_hash": "ab" * 32, "data_size": 1000, "encoded_size": len(comp),
        "compression": {"type": "zstd-h5", "original_size": 1000}})
    with pytest.raises(CorruptedError, match=r"^compressed payload inflates to more than the 1000 bytes declared$"):
        decode(path)


def test_a_truncated_zstd_frame_is_corruption(tmp_path):
    data = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(512))  # 16 KiB that do not compress
    comp = zstandard.ZstdCompressor().compress(data)[:-9]
    path = tmp_path / "cut.rts.png"
    write_spec_image(path, comp, 128, meta_override={
        "data_hash": hashlib.sha256(data).hexdigest(), "data_size": len(data), "encoded_size": len(comp),
        "compression": {"type": "zstd-h5"}})
    with pytest.raises(CorruptedError, match=r"^compressed payload is damaged \(zstd: incomplete or truncated frame\)$"):
        decode(path)


# ---------------------------------------------------------------------------- code mode + compression

@pytest.mark.parametrize("compression", ["zlib", "zstd-h5"])
@pytest.mark.parametrize("data", [LOOP_WASM, TEXTISH], ids=["wasm", "not-wasm"])
def test_code_mode_with_compression_reads_the_compressed_base64(tmp_path, compression, data):
    path = tmp_path / "c.rts.png"
    written = write_geometry(path, data, mode="code", compression=compression, level=9)
    assert base64.b64decode(written.meta["original_data_b64"]) == zlib.compress(data, 9)
    image = read_image(path)
    assert np.array_equal(image.pixels, _their_pixels(written))
    report = verify(path)
    assert report.ok is True and report.problems == []
    assert report.notes == ([NOTE] if compression == "zstd-h5" else [])
    assert decode(path, verify=True) == data
    # Our encoder lays the same file out the same way: compressed bytes in the base64 copy, same pixels.
    ours = tmp_path / "ours.rts.png"
    meta = write_image(data, ours, mode="code", compression="zlib")
    assert meta["original_data_b64"] == base64.b64encode(zlib.compress(data, 9)).decode()
    assert meta["encoded_size"] == len(zlib.compress(data, 9))
    assert np.array_equal(_pixels(ours), _their_pixels(written))


def test_code_mode_base64_already_uncompressed_is_taken_as_it_is(tmp_path):
    """Our files from before this layout (original input in the base64, compressed pixels) still verify."""
    comp = zlib.compress(LOOP_WASM, 9)
    path = tmp_path / "old.rts.png"
    write_spec_image(path, comp, 8, meta_override={
        "encoding": {"type": "RGBA-code", "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"},
        "encoding_mode": "RGBA-code", "data_hash": hashlib.sha256(LOOP_WASM).hexdigest(), "data_size": len(LOOP_WASM),
        "compression": {"type": "zlib", "level": 9}, "encoded_size": len(comp),
        "original_data_b64": base64.b64encode(LOOP_WASM).decode()})
    assert decode(path, verify=True) == LOOP_WASM
    assert verify(path).notes == []


# ---------------------------------------------------------------------------- §6 opcode tables

def test_every_first_byte_gets_their_red_and_alpha():
    ours = _wasm.code_pixels(bytes(b for op in range(256) for b in (op, 7, 9, 11))).reshape(256, 4)
    assert ours[:, 0].tolist() == [their_red(op) for op in range(256)]
    assert ours[:, 3].tolist() == [their_alpha(op) for op in range(256)]
    assert ours[:, 1:3].tolist() == [[7, 9]] * 256  # b3 dropped
    # Their mistakes, kept: drop listed as 0x0A, clz/ctz/popcnt and conversions unlisted, select listed.
    spot = {op: (int(ours[op, 0]), int(ours[op, 3])) for op in (0x0A, 0x1A, 0x1B, 0x1C, 0x12, 0x67, 0x68, 0x69,
                                                              0x79, 0xA6, 0xA7, 0xBF, 0x25, 0x28, 0x40, 0x41)}
    assert spot == {0x0A: (0, 255), 0x1A: (0, 0), 0x1B: (0, 255), 0x1C: (0, 255), 0x12: (0, 0), 0x67: (0, 0),
                    0x68: (0, 0), 0x69: (0, 0), 0x79: (0, 0), 0xA6: (0, 0), 0xA7: (0, 0), 0xBF: (0, 0),
                    0x25: (0, 0), 0x28: (50, 255), 0x40: (50, 255), 0x41: (30, 255)}
    assert sum(their_alpha(op) == 255 for op in range(256)) == 126


def test_hand_written_module_gives_the_same_picture_in_both_tools(tmp_path):
    theirs = tmp_path / "theirs.rts.png"
    written = write_geometry(theirs, LOOP_WASM, mode="code")
    ours = tmp_path / "ours.rts.png"
    write_image(LOOP_WASM, ours, mode="code")
    assert np.array_equal(_pixels(ours), _their_pixels(written))
    assert np.array_equal(_pixels(theirs), _their_pixels(written))
    assert decode(theirs, verify=True) == LOOP_WASM


@pytest.mark.skipif(not WEBP_WASM.exists(), reason="playwright's webp_codec.wasm is not installed")
def test_a_real_module_gives_the_same_picture_in_both_tools(tmp_path):
    """The module of the issue's measurement: 141,343 pixels, 8,479 of which our earlier tables painted
    differently. Their writer's pixels are built here in pure Python, independently of ours."""
    module = WEBP_WASM.read_bytes()
    started = time.monotonic()
    theirs = np.frombuffer(code_stream(module), dtype=np.uint8).reshape(-1, 4)
    assert theirs.shape[0] == 141_343
    ours = _wasm.code_pixels(module).reshape(-1, 4)
    assert np.array_equal(ours, theirs)
    path = tmp_path / "webp.rts.png"
    write_image(module, path, mode="code")
    image = read_image(path)
    assert np.array_equal(image.stream[: theirs.size].reshape(-1, 4), theirs)
    assert decode(path, verify=True) == module
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------------------- our CLI → their reader

def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, env=subprocess_env(), timeout=120)


@pytest.mark.parametrize(("compress", "mode", "stream_kind"), [
    (None, "standard", "none"), ("zlib", "standard", "zlib"), ("zstd", "standard", "zstd"), ("zlib", "code", "zlib"),
])
def test_encode_segments_and_compression_open_in_their_reader(tmp_path, compress, mode, stream_kind):
    data = LOOP_WASM + TEXTISH
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    out = tmp_path / "out.rts.png"
    m = len(LOOP_WASM)
    args = ["encode", str(src), str(out), "--mode", mode, "--segment", f"module:0:{m}", "--segment", f"log:{m}:{len(TEXTISH)}",
            "--segment", "whole"]
    proc = _run(*args, *(["--compress", compress] if compress else []))
    assert proc.returncode == 0, proc.stderr
    read = read_geometry(out)
    assert read.payload == data and read.stream_kind == stream_kind
    assert read.segments_verified == ["module", "log", "whole"] and read.segments_skipped == []
    sha = {name: hashlib.sha256(piece).hexdigest() for name, piece in
           (("module", LOOP_WASM), ("log", TEXTISH), ("whole", data))}
    assert read.meta["offsets"] == {
        "module": {"size": m, "sha256": sha["module"], "start": 0},
        "log": {"size": len(TEXTISH), "sha256": sha["log"], "start": m},
        "whole": {"size": len(data), "sha256": sha["whole"], "start": 0},
    }
    assert read.meta["hashes"] == {**sha, "data": hashlib.sha256(data).hexdigest()}
    label = {"zlib": "zlib", "zstd": "zstd-h5"}.get(compress or "")
    assert (read.meta.get("compression") or {}).get("type") == label
    if compress:
        comp = read.meta["compression"]
        assert comp["original_size"] == len(data) and comp["compressed_size"] == read.meta["encoded_size"] < len(data)
    # The sidecar carries the same table (their readers try it first).
    side = json.loads((tmp_path / "out.rts.png.meta.json").read_text())
    assert side["offsets"] == read.meta["offsets"] and side["hashes"] == read.meta["hashes"]
    tail = f", {label}-compressed to {read.meta['encoded_size']} bytes" if compress else ""
    assert proc.stdout.decode().strip() == (f"wrote {out}: {len(data)} bytes in a {read.meta['grid_size']}x"
                                            f"{read.meta['grid_size']} grid, sha256 {sha['whole']}{tail}, 3 segment(s)")


@pytest.mark.parametrize(("segment", "message"), [
    ("data", "selfheal encode: error: argument --segment: 'data' is reserved (hashes.data is the whole-input hash)"),
    ("a:1", "selfheal encode: error: argument --segment: expected NAME or NAME:START:SIZE"),
    ("a:x:4", "selfheal encode: error: argument --segment: START and SIZE must be byte counts, got 'x' and '4'"),
    (":0:4", "selfheal encode: error: argument --segment: the segment needs a name"),
    ("a:0:101", "selfheal: --segment a:0:101 ends at byte 101, past the 100-byte input"),
])
def test_encode_refuses_bad_segments_in_one_line(tmp_path, capsys, segment, message):
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(100))
    out = tmp_path / "o.rts.png"
    with pytest.raises(SystemExit) as exc:  # argparse's own errors exit 64 through SystemExit
        raise SystemExit(cli.main(["encode", str(src), str(out), "--segment", segment]))
    assert exc.value.code == 64
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not out.exists()


def test_encode_twice_the_same_segment_name_is_refused(tmp_path, capsys):
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(100))
    assert cli.main(["encode", str(src), str(tmp_path / "o.rts.png"), "--segment", "a", "--segment", "a:0:4"]) == 64
    assert capsys.readouterr().err.strip() == "selfheal: --segment 'a' is given twice"


def test_encode_compress_zstd_without_zstandard_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_zstd(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    src = tmp_path / "in.bin"
    src.write_bytes(TEXTISH)
    assert cli.main(["encode", str(src), str(tmp_path / "o.rts.png"), "--compress", "zstd"]) == 3
    assert capsys.readouterr().err.strip() == ("selfheal: --compress zstd needs the optional 'zstandard' package "
                                               "(pip install 'selfheal[zstd]'); --compress zlib needs nothing")
    assert not (tmp_path / "o.rts.png").exists()
    assert cli.main(["encode", str(src), str(tmp_path / "o.rts.png"), "--compress", "zlib"]) == 0


def test_encode_api_refuses_a_segment_named_data():
    with pytest.raises(Exception, match=r"^segment name 'data' is reserved \(hashes.data is the whole-input hash\)$"):
        encode(b"abcd", segments={"data": {"start": 0, "size": 4}})
