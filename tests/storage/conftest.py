"""Fixtures for the storage tests: a real, migrated SQLite file per test."""

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
def db_url(db_path: Path) -> str:
    """A migrated SQLite database in tmp_path."""
    url = f"sqlite:///{db_path}"
    upgrade(url)
    return url
