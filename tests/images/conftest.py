"""Fixtures for registry/service tests: a migrated database under the test's SELFHEAL_HOME and images."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from healing.config import Settings, load_settings
from healing.pixelrts import write_image


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(_isolated_home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a migrated database: SQLite under SELFHEAL_HOME, then a fresh database on a real
    PostgreSQL server named by SELFHEAL_DATABASE_URL (skipped where none can be had)."""
    from storage.engine import dispose_engines
    from storage.migrate import upgrade

    if request.param == "postgresql":
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", request.getfixturevalue("postgres_server").fresh_database())
    upgrade()
    yield load_settings()
    dispose_engines()


@pytest.fixture()
def make_image(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "kernel.rts.png", size: int = 20_000, seed: int | None = None) -> Path:
        path = tmp_path / "imgs" / name
        path.parent.mkdir(exist_ok=True)
        data = os.urandom(size) if seed is None else bytes((i * 31 + seed) % 251 for i in range(size))
        write_image(data, path)
        return path

    return make


def flip_idat_byte(path: Path) -> bytes:
    """Damage the PNG body (caught by the IDAT CRC); returns the damaged bytes."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    return bytes(raw)
