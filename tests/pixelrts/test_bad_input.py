"""Every kind of bad input the codec CLI can meet: one line on stderr, the right exit code, no traceback."""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from healing.pixelrts import write_image
from tests.conftest import selfheal_cmd, subprocess_env

from .spec_writer import spec_d2xy, write_spec_image


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, text=True, env=subprocess_env(**env), timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.rts.png"
    write_image(os.urandom(3000), path)
    return path


def test_not_a_png(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not an image\n")
    assert_one_line_error(run("validate", str(path)), 3, "not a PNG image")
    assert_one_line_error(run("decode", str(path)), 3, "not a PNG image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.rts.png"
    path.write_bytes(b"")
    assert_one_line_error(run("validate", str(path)), 3, "empty file")


def test_directory(tmp_path):
    assert_one_line_error(run("validate", str(tmp_path)), 3, "is a directory")


def test_missing_file(tmp_path):
    assert_one_line_error(run("validate", str(tmp_path / "nope.rts.png")), 3, "no such file")
    assert_one_line_error(run("info", str(tmp_path / "nope.rts.png")), 3, "no such file")


def test_truncated_png(good, tmp_path):
    raw = good.read_bytes()
    for cut in (4, 40, len(raw) // 2, len(raw) - 6):
        bad = tmp_path / f"cut{cut}.rts.png"
        bad.write_bytes(raw[:cut])
        assert_one_line_error(run("validate", str(bad)), 2, "truncated PNG")


def test_crc_error(good, tmp_path):
    raw = bytearray(good.read_bytes())
    idat = raw.index(b"IDAT")
    raw[idat + 10] ^= 0xFF
    bad = tmp_path / "crc.rts.png"
    bad.write_bytes(bytes(raw))
    assert_one_line_error(run("validate", str(bad)), 2, "CRC error in chunk IDAT")


def test_permission_denied(good, monkeypatch, capsys):
    # Root ignores file modes; where we cannot drop to 'nobody', make open() refuse the way the kernel would.
    workdir = Path(tempfile.mkdtemp())
    try:
        os.chmod(workdir, 0o755)
        target = workdir / "secret.rts.png"
        shutil.copy(good, target)
        os.chmod(target, 0o000)
        if os.geteuid() != 0:
            assert_one_line_error(run("validate", str(target)), 3, "permission denied")
            return
        try:
            proc = subprocess.run([*selfheal_cmd(), "validate", str(target)], capture_output=True, text=True,
                                  env=subprocess_env(SELFHEAL_HOME=str(workdir / "home")), timeout=60, user=65534)
        except (PermissionError, OSError):
            proc = None
        if proc is not None and "No module named" not in proc.stderr:
            assert_one_line_error(proc, 3, "permission denied")
            return
        from healing import cli

        real_open = os.open

        def refusing_open(file, *args, **kwargs):
            if str(file) == str(target):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
        assert cli.main(["validate", str(target)]) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"selfheal: {target}: cannot read (permission denied)"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_non_square_and_non_power_of_two(tmp_path):
    plain = tmp_path / "wide.png"
    Image.new("RGBA", (8, 4)).save(plain)
    assert_one_line_error(run("decode", str(plain), "-o", str(tmp_path / "o")), 3, "8x4")
    info = PngImagePlugin.PngInfo()
    info.add_text("PixelRTS", 'PixelRTS{"format":"PixelRTS-2.0","data_size":4}')
    claimed = tmp_path / "wide.rts.png"
    Image.new("RGBA", (8, 4)).save(claimed, pnginfo=info)
    assert_one_line_error(run("validate", str(claimed)), 2, "square")
    six = tmp_path / "six.rts.png"
    Image.new("RGBA", (6, 6)).save(six, pnginfo=info)
    assert_one_line_error(run("validate", str(six)), 2, "not a power of two")


def test_sixteen_bit_png_is_refused_clearly(tmp_path):
    path = tmp_path / "deep.png"
    import cv2

    assert cv2.imwrite(str(path), np.zeros((4, 4, 4), dtype=np.uint16))
    assert_one_line_error(run("validate", str(path)), 3, "16-bit")


def test_palette_and_greyscale_plain_pngs_are_converted(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 4), 7, dtype=np.uint8), "L").save(grey)
    proc = run("decode", str(grey), "-o", str(tmp_path / "grey.bin"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grey.bin").read_bytes()[:8] == bytes([7, 7, 7, 255, 7, 7, 7, 255])
    # a plain PNG has nothing to verify against: validate says unknown
    assert_one_line_error(run("validate", str(grey)), 3, "not a PixelRTS image")


def test_huge_declared_dimensions_refused_before_allocating(tmp_path):
    side = 200_000  # 40 G pixels: allocating this would take 160 GB
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    bomb = tmp_path / "bomb.rts.png"
    bomb.write_bytes(png)
    assert_one_line_error(run("validate", str(bomb)), 3, "exceed the limit")
    small = tmp_path / "small.rts.png"
    write_image(b"x" * 5000, small)  # 64x64 = 4096 pixels
    assert_one_line_error(run("validate", str(small), SELFHEAL_MAX_PIXELS="1000"), 3, "exceed the limit of 1000 pixels")


def test_metadata_not_json(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("PixelRTS", "PixelRTS{this is not json")
    path = tmp_path / "j.rts.png"
    Image.new("RGBA", (4, 4)).save(path, pnginfo=info)
    assert_one_line_error(run("validate", str(path)), 2, "not valid JSON")
    side = tmp_path / "s.rts.png"
    write_image(b"abc", side)
    (tmp_path / "s.rts.png.meta.json").write_text("{broken")
    assert_one_line_error(run("validate", str(side)), 2, "sidecar s.rts.png.meta.json is not valid JSON")


def test_data_size_larger_than_capacity(tmp_path):
    path = tmp_path / "big.rts.png"
    write_spec_image(path, b"abcd", 4, meta_override={"data_size": 65})
    assert_one_line_error(run("validate", str(path)), 2, "holds only 64 bytes")


def test_nonzero_padding(tmp_path):
    path = tmp_path / "pad.rts.png"
    meta = write_spec_image(path, b"payload!", 4)
    img = Image.open(path)
    img.load()
    x, y = spec_d2xy(4, 10)
    img.putpixel((x, y), (0, 0, 0, 1))
    info = PngImagePlugin.PngInfo()
    info.add_text("PixelRTS", "PixelRTS" + json.dumps(meta, separators=(",", ":")))
    img.save(path, pnginfo=info)
    proc = run("validate", str(path), "--json")
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert out["status"] == "corrupted" and out["hash_verified"] is True
    assert out["problems"][0]["kind"] == "padding" and out["problems"][0]["byte_range"] == [43, 44]
    assert run("decode", str(path), "--verify", "-o", str(tmp_path / "o")).returncode == 2
    assert not (tmp_path / "o").exists()


def test_bad_grid_size_is_usage_error(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"z" * 100)
    assert_one_line_error(run("encode", str(src), str(tmp_path / "o.png"), "--grid-size", "12"), 64, "power of two")
    assert_one_line_error(run("encode", str(src), str(tmp_path / "o.png"), "--grid-size", "4"), 64, "holds 64 bytes")
    proc = run("encode", str(src), str(tmp_path / "o.png"), "--grid-size", "abc")
    assert proc.returncode == 64 and "Traceback" not in proc.stderr


def test_usage_errors_exit_64():
    assert run().returncode == 64
    assert run("frobnicate").returncode == 64
    assert run("validate").returncode == 64
