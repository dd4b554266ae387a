"""The codec and its commands against hostile input (issue 10): exact messages and exit codes, in-process."""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from pathlib import Path

import pytest

from healing.cli import main
from healing.errors import CorruptedError, InputError
from healing.pixelrts import read_image, write_image
from healing.pixelrts._schema import parse_metadata
from tests.security.hostile_corpus import SIG, chunk, ihdr, metadata_text, raw_png, with_chunk, with_metadata

HASH = "ab" * 32


def meta(rest: str) -> str:
    """Metadata text with a valid data_hash followed by ``rest`` (raw JSON members)."""
    return '{"data_hash":"' + HASH + '"' + rest + "}"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "good.rts.png"
    write_image(bytes(range(256)) * 8, path)
    path.with_name(path.name + ".meta.json").unlink()  # metadata from the tEXt chunk only
    return path


@pytest.mark.parametrize(("text", "message"), [
    (meta(',"offsets":{"k":{"start":Infinity}}'), "is not valid JSON (Infinity is not a JSON number)"),
    (meta(',"x":NaN'), "is not valid JSON (NaN is not a JSON number)"),
    (meta(',"x":' + "9" * 5000), "is not valid JSON (an integer of 5000 digits)"),
    (meta(',"x":1e999'), "is not valid JSON (1e999 is out of range)"),
    (meta(',"x":' + "[" * 40 + "]" * 40), "is invalid: nested deeper than 32 levels"),
    (meta(',"x":' + "[" * 100000 + "]" * 100000), "is not valid JSON"),
    ('{"data_hash":12345}', "is invalid: data_hash must be a sha256 hex string, got 12345"),
    ('{"data_size":3}', "is invalid: data_hash is missing"),
    (meta(',"compression":{"type":"zstd","original_size":"abc"}'),
     'is invalid: compression.original_size must be a non-negative integer, got "abc"'),
    (meta(',"data_size":true'), "is invalid: data_size must be a non-negative integer, got true"),
    (meta(',"encoding":"RGBA"'), 'is invalid: encoding must be an object, got "RGBA"'),
    (meta(',"offsets":{"k":{"size":-1}}'), "is invalid: offsets.k.size must be a non-negative integer, got -1"),
    (meta(',"hashes":[1]'), "is invalid: hashes must be an object, got [1]"),
    (meta(',"compression":"zlib"'), 'is invalid: compression must be an object, got "zlib"'),
    ("[1]", "is not a JSON object"),
])
def test_invalid_metadata_is_one_corrupted_line(text: str, message: str) -> None:
    with pytest.raises(CorruptedError) as info:
        parse_metadata(text, "the PNG tEXt chunk")
    assert str(info.value) == f"PixelRTS metadata in the PNG tEXt chunk {message}"


@pytest.mark.parametrize("crafted", [
    lambda t: t[:-1] + ',"offsets":{"k":{"start":Infinity}}}',
    lambda t: t[:-1] + ',"compression":{"type":"zstd","original_size":"abc"}}',
    lambda t: t.replace('"data_size":2048', '"data_size":' + "7" * 5000),
    lambda t: t.replace(json.dumps(json.loads(t)["data_hash"]), "42"),
    lambda t: t.replace('"data_hash":', '"data_hash_gone":'),
    lambda t: t.replace('"hashes":{"data":"', '"hashes":{"data":"00'),
], ids=["infinity", "zstd-abc", "5000-digits", "hash-int", "hash-missing", "hashes-data-mismatch"])
def test_validate_check_and_info_agree_on_metadata_problems(image: Path, capsys, crafted) -> None:
    text = json.dumps(metadata_text(image.read_bytes()), separators=(",", ":"))
    image.write_bytes(with_metadata(image.read_bytes(), crafted(text)))
    codes = {argv[0]: _cli(capsys, *argv)[0] for argv in (["validate", str(image)], ["check", str(image), "--json"])}
    assert codes == {"validate": 2, "check": 2}
    code, out, err = _cli(capsys, "check", str(image), "--json")
    findings = json.loads(out)["findings"]
    assert findings[0]["category"] == "structural" and findings[0]["severity"] == "high"


def test_zlib_bomb_in_ztxt_is_refused_without_inflating(image: Path, capsys) -> None:
    bomb = zlib.compressobj(9)
    body = b"".join(bomb.compress(bytes(16 << 20)) for _ in range(16)) + bomb.flush()  # 256 MiB of zeros
    image.write_bytes(with_chunk(image.read_bytes(), b"zTXt", b"Comment\0\0" + body))
    started = time.perf_counter()
    code, out, err = _cli(capsys, "validate", str(image))
    assert time.perf_counter() - started < 2
    assert (code, out) == (2, "")
    assert re.fullmatch(r"selfheal: PNG text chunk zTXt at byte \d+ is over the limit: text chunks may hold 1048576 "
                        r"bytes in all, decompressed \(pixelrts.max_metadata_bytes\)\n", err)


def test_max_metadata_bytes_is_a_setting(image: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pixelrts: {max_metadata_bytes: 1024}\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    image.write_bytes(with_chunk(image.read_bytes(), b"tEXt", b"Comment\0" + b"x" * 1500))
    code, _out, err = _cli(capsys, "info", str(image))
    assert code == 2 and "text chunks may hold 1024 bytes in all" in err
    config.write_text("pixelrts: {max_metadata_bytes: 10}\n")
    code, _out, err = _cli(capsys, "info", str(image))
    assert (code, err) == (3, "selfheal: config: pixelrts.max_metadata_bytes must be ≥ 1024, got 10\n")


def test_pixel_limit_counts_16_bit_samples_twice_before_inflating(tmp_path: Path) -> None:
    deep = tmp_path / "deep.png"
    deep.write_bytes(SIG + chunk(b"IHDR", ihdr(8192, 8191, depth=16)) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(InputError) as info:
        read_image(deep)
    assert str(info.value) == ("declared dimensions 8192x8191 (67100672 pixels of 16-bit samples (counted twice)) exceed "
                               "the limit of 67108864 pixels (pixelrts.max_pixels)")


def test_surplus_idat_is_refused_unread(image: Path) -> None:
    good = image.read_bytes()
    image.write_bytes(good[:-12] + chunk(b"IDAT", bytes(64 << 20)) + good[-12:])
    started = time.perf_counter()
    with pytest.raises(CorruptedError, match=r"^corrupted PNG: the file is \d+ bytes, more than a 32x32 RGBA image can "
                                             r"need \(\d+\); surplus data is not read$"):
        read_image(image)
    image.write_bytes(good[:-12] + chunk(b"IDAT", bytes(8000)) + good[-12:])
    with pytest.raises(CorruptedError, match=r"^corrupted PNG: \d+ bytes of IDAT data, more than a 32x32 RGBA image "
                                             r"can need \(4720\); not inflated$"):
        read_image(image)
    assert time.perf_counter() - started < 2


def test_idat_bomb_is_never_inflated_past_the_scanlines(tmp_path: Path) -> None:
    meta = {"data_hash": HASH, "data_size": 4}
    bomb = zlib.compress(bytes(256 << 20), 9)
    path = tmp_path / "bomb.rts.png"
    path.write_bytes(raw_png(1024, 1024, b"", idat=bomb, extra=[(b"tEXt", b"PixelRTS\0PixelRTS" + json.dumps(meta).encode())]))
    with pytest.raises(CorruptedError, match="^corrupted PNG: the pixel data inflates to more than the 4195328 bytes a "
                                             "1024x1024 image holds$"):
        read_image(path)


def test_non_regular_sidecars_are_unknown_at_once(image: Path, capsys) -> None:
    side = image.with_name(image.name + ".meta.json")
    side.symlink_to("/dev/zero")
    started = time.perf_counter()
    code, _out, err = _cli(capsys, "decode", str(image), "--verify", "-o", str(image.with_name("out.bin")))
    assert time.perf_counter() - started < 1
    assert (code, err) == (3, f"selfheal: {side}: is a character device, not a sidecar (pixelrts.max_metadata_bytes)\n")
    side.unlink()
    os.mkfifo(side)
    code, out, err = _cli(capsys, "info", str(image), "--json")
    assert code == 3 and json.loads(out) == {"error": f"{side}: is a FIFO, not a sidecar (pixelrts.max_metadata_bytes)",
                                             "exit_code": 3}


def test_a_251_byte_name_is_valid_its_sidecar_names_cannot_exist(image: Path, capsys) -> None:
    long_name = image.with_name("k" * 243 + ".rts.png")
    assert len(long_name.name) == 251
    image.rename(long_name)
    code, out, _err = _cli(capsys, "validate", str(long_name))
    assert code == 0 and out.endswith("valid PixelRTS v2, 2048 bytes, sha256 verified\n")


def test_info_escapes_control_characters_from_metadata(image: Path, capsys) -> None:
    meta = metadata_text(image.read_bytes())
    meta.update(name="\x1b[2J\x1b[32mOK", description="fine\r\n  PixelRTS:    valid\x07")
    image.write_bytes(with_metadata(image.read_bytes(), json.dumps(meta, separators=(",", ":"))))
    code, out, _err = _cli(capsys, "info", str(image))
    assert code == 0 and "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "  name:        \\x1b[2J\\x1b[32mOK\n" in out
    assert "  description: fine\\r\\n  PixelRTS:    valid\\x07\n" in out


@pytest.mark.parametrize("argv", [
    ["decode", "{image}"], ["decode", "{image}", "-o", "{link}"], ["encode", "{input}", "{link}"],
    ["check", "{image}", "--output", "{link}"], ["baseline", "{image}", "-o", "{link}"],
    ["analyze", "{image}", "--method", "entropy", "--output", "{link}"],
], ids=["decode-default-output", "decode-o", "encode", "check-output", "baseline", "analyze"])
def test_outputs_are_never_written_through_a_symlink(image: Path, tmp_path: Path, capsys, argv: list[str]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    link = image.with_name("good") if argv == ["decode", "{image}"] else tmp_path / "out.link"
    link.symlink_to(victim)
    source = tmp_path / "input.bin"
    source.write_bytes(b"data")
    code, _out, err = _cli(capsys, *[a.format(image=image, link=link, input=source) for a in argv])
    assert code == 3
    what = "image" if argv[0] == "encode" else "output"
    assert err.endswith(f"{link}: {what} path is a symbolic link; refusing to write there\n") and err.count("\n") == 1
    assert victim.read_text() == "precious" and link.is_symlink()


def test_encode_refuses_a_symlinked_sidecar_before_writing_the_image(tmp_path: Path, capsys) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"data")
    out = tmp_path / "x.rts.png"
    Path(f"{out}.meta.json").symlink_to(tmp_path / "victim")
    code, _out, err = _cli(capsys, "encode", str(source), str(out))
    assert (code, err) == (3, f"selfheal: {out}.meta.json: sidecar path is a symbolic link; refusing to write there\n")
    assert not out.exists() and not (tmp_path / "victim").exists()


def test_vision_output_files_are_never_written_through_a_symlink(image: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "overlays"
    out_dir.mkdir()
    (out_dir / "good_entropy.png").symlink_to(tmp_path / "victim.png")
    code, _out, err = _cli(capsys, "vision", str(image), "--action", "entropy", "--output-dir", str(out_dir))
    assert code == 3 and "good_entropy.png: output path is a symbolic link; refusing to write there" in err
    assert not (tmp_path / "victim.png").exists()
