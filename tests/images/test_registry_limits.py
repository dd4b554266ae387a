"""register applies the configured pixelrts.max_metadata_bytes, not the built-in default."""

from __future__ import annotations

from healing.cli import main
from healing.pixelrts import write_image


def test_register_refuses_metadata_over_the_configured_limit(tmp_path, monkeypatch, capsys) -> None:
    image = tmp_path / "mod.rts.png"
    write_image(b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 16, image, mode="code")  # ~5.5 KB of base64 metadata
    config = tmp_path / "c.yaml"
    config.write_text("pixelrts:\n  max_metadata_bytes: 2048\n")
    monkeypatch.setenv("SELFHEAL_CONFIG", str(config))
    code = main(["register", str(image)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2048" in err and err.count("\n") == 1
    config.write_text("pixelrts:\n  max_metadata_bytes: 65536\n")
    assert main(["register", str(image)]) == 0
