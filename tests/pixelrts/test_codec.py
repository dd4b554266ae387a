import base64
import hashlib
import json
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from healing.errors import CorruptedError, DependencyError, InputError, UsageError
from healing.pixelrts import (
    decode,
    decode_range,
    encode,
    grid_size_for,
    read_image,
    read_metadata,
    verify,
    write_image,
)

from .spec_writer import spec_d2xy, write_spec_image


def _write(tmp_path, data, name="x.rts.png", **kw):
    path = tmp_path / name
    write_image(data, path, **kw)
    return path


def test_worked_example_pixels(tmp_path):
    path = _write(tmp_path, bytes(range(1, 21)), grid_size=4)
    rgba = np.asarray(Image.open(path).convert("RGBA"))
    rows = rgba.reshape(4, 16).tolist()
    assert rows[0] == [1, 2, 3, 4, 5, 6, 7, 8] + [0] * 8
    assert rows[1] == [0x0D, 0x0E, 0x0F, 0x10, 9, 10, 11, 12] + [0] * 8
    assert rows[2] == [0x11, 0x12, 0x13, 0x14] + [0] * 12
    assert rows[3] == [0] * 16


@pytest.mark.parametrize("length", [0, 1, 3, 4, 63, 64, 65, 4096, 1 << 20])
def test_round_trip_byte_exact(tmp_path, length):
    data = os.urandom(length)
    path = _write(tmp_path, data)
    assert decode(path, verify=True) == data
    report = verify(path)
    assert report.ok and report.hash_verified is True and report.problems == []


@pytest.mark.parametrize(
    ("length", "grid"),
    [(0, 1), (1, 4), (64, 4), (65, 8), (256, 8), (257, 16), (1024, 16), (1 << 20, 512), ((1 << 20) + 1, 1024)],
)
def test_grid_size_rule_current(length, grid):
    assert grid_size_for(length) == grid


@pytest.mark.parametrize(("length", "grid"), [(1, 1), (4, 1), (5, 2), (16, 2), (17, 4), (64, 4)])
def test_grid_size_rule_older_writers(length, grid):
    assert grid_size_for(length, legacy=True) == grid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=3000), mode=st.sampled_from(["standard", "code"]))
def test_round_trip_property(tmp_path, data, mode):
    encoded = encode(data, mode=mode)
    path = tmp_path / "h.rts.png"
    path.write_bytes(encoded.png)
    image = read_image(path, use_sidecar=False)
    assert image.payload == data
    assert image.metadata["data_hash"] == hashlib.sha256(data).hexdigest()
    assert verify(path, use_sidecar=False).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=2000), start=st.integers(0, 2100), count=st.integers(0, 2100))
def test_decode_range_equals_slice(tmp_path, data, start, count):
    path = tmp_path / "r.rts.png"
    path.write_bytes(encode(data).png)
    assert decode_range(path, start, count) == data[start : start + count]


def test_metadata_order_and_writer_additions(tmp_path):
    data = b"kernel" * 100
    path = _write(tmp_path, data, metadata={"type": "kernel", "name": "vmlinuz", "version": "6.1"},
                  segments={"head": {"start": 0, "size": 6, "type": "header"}})
    meta = read_metadata(path)
    assert list(meta) == ["format", "format_version", "grid_size", "encoding", "offsets", "hashes", "encoding_mode",
                          "type", "name", "content_version", "data_hash", "data_size"]
    assert meta["format"] == "PixelRTS-2.0" and meta["format_version"] == 2
    assert meta["encoding"] == {"type": "RGBA-dense", "bytes_per_pixel": 4, "mapping": "Hilbert space-filling curve"}
    assert meta["hashes"]["data"] == hashlib.sha256(data).hexdigest() == meta["data_hash"]
    assert meta["offsets"]["head"] == {"type": "header", "size": 6, "sha256": hashlib.sha256(b"kernel").hexdigest(), "start": 0}
    assert meta["hashes"]["head"] == meta["offsets"]["head"]["sha256"]
    # embedded tEXt: keyword PixelRTS, value 'PixelRTS' + compact ASCII JSON
    text = Image.open(path).text["PixelRTS"]
    assert text.startswith('PixelRTS{"format":"PixelRTS-2.0","format_version":2,')
    assert json.loads(text[len("PixelRTS"):]) == meta
    # sidecar pretty-printed with indent 2
    sidecar = (tmp_path / "x.rts.png.meta.json").read_text()
    assert sidecar.startswith('{\n  "format": "PixelRTS-2.0"')
    assert json.loads(sidecar) == meta


def test_text_chunk_comes_before_idat(tmp_path):
    path = _write(tmp_path, b"abc")
    raw = path.read_bytes()
    assert raw.index(b"tEXtPixelRTS") < raw.index(b"IDAT")
    assert Image.open(path).mode == "RGBA"


def test_hand_built_spec_images_decode(tmp_path):
    for length in (1, 20, 64, 100, 1000):
        data = bytes((i * 7 + 3) % 256 for i in range(length))
        n = grid_size_for(length)
        path = tmp_path / f"spec{length}.rts.png"
        write_spec_image(path, data, n)
        image = read_image(path)
        assert image.metadata_source == "text"
        assert image.payload == data
        assert verify(path).ok


def test_older_grid_rule_image_decodes(tmp_path):
    data = b"\x01\x02\x03\x04"  # older writers: 1x1 grid
    path = tmp_path / "old.rts.png"
    write_spec_image(path, data, 1)
    assert read_image(path).grid_size == 1
    assert decode(path, verify=True) == data
    data = bytes(range(16))  # 2x2
    write_spec_image(path, data, 2)
    assert decode(path, verify=True) == data


def test_only_short_sidecar_name(tmp_path):
    data = b"sidecar only" * 10
    path = tmp_path / "kernel.rts.png"
    write_spec_image(path, data, 8, embed=False, sidecar_name="kernel.rts.meta.json")
    image = read_image(path)
    assert image.metadata_source == "sidecar:kernel.rts.meta.json"
    assert decode(path, verify=True) == data


def test_long_sidecar_name_wins_over_short(tmp_path):
    data = b"x" * 50
    path = tmp_path / "k.rts.png"
    write_spec_image(path, data, 8, embed=False, sidecar_name="k.rts.png.meta.json")
    (tmp_path / "k.rts.meta.json").write_text("{}")
    assert read_image(path).metadata_source == "sidecar:k.rts.png.meta.json"


def test_sidecar_disagreeing_with_text_is_a_structural_problem(tmp_path):
    path = _write(tmp_path, b"a" * 100)
    side = tmp_path / "x.rts.png.meta.json"
    meta = json.loads(side.read_text())
    meta["data_size"] = 99
    side.write_text(json.dumps(meta))
    report = verify(path)
    assert not report.ok
    assert "sidecar_mismatch" in [p.kind for p in report.problems]


def test_fresh_state_per_file(tmp_path):
    big = _write(tmp_path, os.urandom(5000), name="big.rts.png")
    small = _write(tmp_path, b"tiny", name="small.rts.png")
    assert len(decode(big)) == 5000
    assert decode(small) == b"tiny"


def test_code_mode_wasm(tmp_path):
    wasm = b"\x00asm\x01\x00\x00\x00" + bytes([0x20, 0x00, 0x41, 0x01, 0x6A, 0x0B, 0x02, 0x40, 0xE0, 1, 2, 3])
    path = _write(tmp_path, wasm, mode="code")
    meta = read_metadata(path)
    assert meta["encoding"]["type"] == "RGBA-code" and meta["encoding_mode"] == "RGBA-code"
    assert base64.b64decode(meta["original_data_b64"]) == wasm
    image = read_image(path)
    px = image.stream[:20].reshape(-1, 4).tolist()
    assert px[0] == [255, ord("a"), ord("s"), 255]  # b0=0x00 unreachable → 255, b3 dropped, known → A=255
    assert px[1] == [0, 0, 0, 255]  # 0x01 nop weight 0
    assert px[2] == [50, 0x00, 0x41, 255]  # local.get → memory/variable 50
    assert px[3] == [80, 0x0B, 0x02, 255]  # i32.add → arithmetic 80
    assert px[4] == [0, 1, 2, 0]  # 0xE0 is not an opcode we know: weight 0, alpha 0
    assert decode(path, verify=True) == wasm


def test_code_mode_non_wasm_is_plain_rgba_but_labelled(tmp_path):
    data = b"not wasm at all"
    path = _write(tmp_path, data, mode="code")
    image = read_image(path)
    assert image.metadata["encoding_mode"] == "RGBA-code"
    assert image.stream[: len(data)].tobytes() == data
    assert decode(path, verify=True) == data


def test_zlib_compressed_payload_read(tmp_path):
    data = b"compress me " * 500
    path = _write(tmp_path, data, compression="zlib")
    meta = read_metadata(path)
    assert meta["compression"]["type"] == "zlib" and meta["encoded_size"] == len(zlib.compress(data, 9))
    assert decode(path, verify=True) == data


def test_zstd_compressed_payload_read(tmp_path, monkeypatch):
    zstd = pytest.importorskip("zstandard")
    data = b"zstd payload " * 300
    comp = zstd.ZstdCompressor().compress(data)
    n = grid_size_for(len(comp))
    path = tmp_path / "z.rts.png"
    write_spec_image(path, comp, n, meta_override={
        "data_hash": hashlib.sha256(data).hexdigest(), "data_size": len(data), "encoded_size": len(comp),
        "compression": {"type": "zstd-h5", "level": 3, "original_size": len(data), "compressed_size": len(comp)}})
    assert decode(path, verify=True) == data
    import builtins
    real_import = builtins.__import__

    def no_zstd(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    with pytest.raises(DependencyError, match="zstandard"):
        decode(path)


def test_explicit_grid_size_errors():
    with pytest.raises(UsageError, match="power of two"):
        encode(b"abc", grid_size=3)
    with pytest.raises(UsageError, match="holds 16 bytes but the data needs 17"):
        encode(b"a" * 17, grid_size=2)
    assert read_image_grid(encode(b"a" * 16, grid_size=2).png) == 2


def read_image_grid(png: bytes) -> int:
    return Image.open(__import__("io").BytesIO(png)).size[0]


def test_hash_mismatch_and_padding_detected(tmp_path):
    data = bytes(range(256)) * 4
    n = 32
    path = tmp_path / "bad.rts.png"
    meta = write_spec_image(path, data, n)
    # flip one payload byte: byte 10 lives in pixel 2, channel 2
    img = Image.open(path)
    px = img.load()
    x, y = spec_d2xy(n, 2)
    r, g, b, a = px[x, y]
    px[x, y] = (r, g, b ^ 1, a)
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("PixelRTS", "PixelRTS" + json.dumps(meta, separators=(",", ":")))
    img.save(path, pnginfo=info)
    report = verify(path)
    assert report.hash_verified is False
    assert [p.kind for p in report.problems] == ["hash_mismatch"]
    with pytest.raises(CorruptedError):
        decode(path, verify=True)
    # restore the byte, then write into the padding at stream byte 1030 (pixel 257, channel 2)
    px[x, y] = (r, g, b, a)
    x2, y2 = spec_d2xy(n, 257)
    px[x2, y2] = (0, 0, 7, 0)
    img.save(path, pnginfo=info)
    report = verify(path)
    assert report.hash_verified is True
    assert [(p.kind, p.byte_range) for p in report.problems] == [("padding", (1030, 1031))]


def test_segment_mismatch(tmp_path):
    data = b"A" * 64 + b"B" * 64
    path = tmp_path / "s.rts.png"
    write_spec_image(path, data, 8, meta_override={
        "offsets": {"boot": {"start": 64, "size": 64}}, "hashes": {"boot": hashlib.sha256(b"C" * 64).hexdigest()}})
    report = verify(path)
    assert report.hash_verified is True
    assert [(p.kind, p.byte_range) for p in report.problems] == [("segment_mismatch", (64, 128))]


def test_converter_segments_without_start_are_ignored(tmp_path):
    data = b"xyz" * 30
    path = tmp_path / "c.rts.png"
    write_spec_image(path, data, 8, meta_override={"offsets": {"kernel": {"type": "kernel", "size": 90, "sha256": "00"}}})
    assert verify(path).ok


def test_plain_png_reads_whole_grid(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[0, 0] = (1, 2, 3, 4)
    path = tmp_path / "plain.png"
    Image.fromarray(arr, "RGBA").save(path)
    image = read_image(path)
    assert not image.is_pixelrts and image.metadata is None
    assert image.payload[:4] == b"\x01\x02\x03\x04" and len(image.payload) == 64
    assert verify(path).hash_verified is None


def test_rgb_palette_and_greyscale_are_converted(tmp_path):
    rgb = np.full((4, 4, 3), 9, dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").stream[:4].tolist() == [9, 9, 9, 255]
    Image.fromarray(np.full((4, 4), 5, dtype=np.uint8), "L").save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").stream[:4].tolist() == [5, 5, 5, 255]
    Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").stream[:4].tolist() == [9, 9, 9, 255]


def test_read_image_from_bytes_of_upload(tmp_path):
    data = b"upload" * 20
    png = encode(data).png
    image = read_image(tmp_path / "upload.rts.png", data=png)
    assert image.payload == data


def test_missing_metadata_json_raises_corrupted(tmp_path):
    path = tmp_path / "j.rts.png"
    img = Image.new("RGBA", (4, 4))
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("PixelRTS", "PixelRTS{not json")
    img.save(path, pnginfo=info)
    with pytest.raises(CorruptedError, match="not valid JSON"):
        read_image(path)


def test_unknown_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.png")


@pytest.mark.slow
def test_large_round_trip_uses_threaded_gather(tmp_path):
    data = np.random.default_rng(7).integers(0, 256, (17 << 20) + 5, dtype=np.uint8).tobytes()
    path = _write(tmp_path, data, compression_level=1)
    out = decode(path, verify=True)
    assert isinstance(out, bytearray) and out == data
    assert read_image(path).payload == data
