import json
import os
import subprocess

from tests.conftest import selfheal_cmd, subprocess_env


def run(*args, **kw):
    return subprocess.run([*selfheal_cmd(), *args], capture_output=True, env=subprocess_env(), timeout=60, **kw)


def test_encode_validate_info_decode_round_trip(tmp_path):
    data = os.urandom(70_000)
    src = tmp_path / "kernel.bin"
    src.write_bytes(data)
    out = tmp_path / "kernel.rts.png"
    proc = run("encode", str(src), str(out), "--name", "vmlinuz", "--type", "kernel")
    assert proc.returncode == 0, proc.stderr
    assert b"in a 256x256 grid" in proc.stdout
    assert (tmp_path / "kernel.rts.png.meta.json").exists()

    proc = run("validate", str(out), "--json")
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["hash_verified"] is True and report["data_size"] == 70_000

    proc = run("info", str(out), "--json")
    info = json.loads(proc.stdout)
    assert info["grid_size"] == 256 and info["metadata"]["name"] == "vmlinuz" and info["metadata"]["type"] == "kernel"

    proc = run("decode", str(out), "--verify")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "kernel").read_bytes() == data

    proc = run("decode", str(out), "-o", "-")
    assert proc.stdout == data


def test_code_mode_from_cli(tmp_path):
    src = tmp_path / "m.wasm"
    src.write_bytes(b"\x00asm\x01\x00\x00\x00" + bytes(range(40)))
    out = tmp_path / "m.rts.png"
    assert run("encode", str(src), str(out), "--mode", "code").returncode == 0
    info = json.loads(run("info", str(out), "--json").stdout)
    assert info["metadata"]["encoding_mode"] == "RGBA-code"
    assert info["metadata"]["original_data_b64"].startswith("<")  # summarised, not dumped
    assert run("decode", str(out), "--verify", "-o", str(tmp_path / "m2.wasm")).returncode == 0
    assert (tmp_path / "m2.wasm").read_bytes() == src.read_bytes()


def test_help_is_readable():
    proc = run("--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "exit codes: 0 healthy/valid, 1 warning, 2 critical" in text
    for command in ("encode", "decode", "info", "validate"):
        assert command in text


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from healing.cli import build_parser; build_parser(); print(sorted(m for m in ('numpy','cv2','sqlalchemy','streamlit','sklearn') if m in sys.modules))"
    proc = subprocess.run([*selfheal_cmd()[:1], "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr
