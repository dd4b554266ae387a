"""Fixtures for the storage tests: a real, migrated database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import dispose_engines
from storage.migrate import upgrade


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    # Engines are cached per URL; each test starts and ends without pooled connections.
    dispose_engines()
    yield
    dispose_engines()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "selfheal.db"


@pytest.fixture
def sqlite_url(db_path: Path) -> str:
    """A migrated SQLite database in tmp_path (for tests of SQLite's own behaviour)."""
    url = f"sqlite:///{db_path}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database: a SQLite file in tmp_path, then a fresh database on a real PostgreSQL server
    (skipped where none can be had; see tests/pg_server.py)."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
