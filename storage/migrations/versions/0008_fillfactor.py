"""Room for in-place updates on PostgreSQL (issue 15): ``images`` and ``check_summaries`` get fillfactor 50.

Every check cycle updates each unchanged image's ``images.last_checked_at`` and its ``check_summaries``
counters. PostgreSQL writes a new row version for every update; with full pages (the default fillfactor
100) the new version of an ``images`` row (about 1 KB: the baseline summary) lands on another page, and
the table grew by about 1.05 KB per image per cycle until autovacuum came (measured: 3,000 images, 14
cycles). With half of each page free, the update stays on the page as a heap-only tuple that PostgreSQL
prunes by itself: 100 % HOT updates and 0 bytes of growth per cycle after the first (8 cycles). Neither
column that changes is indexed, which HOT also needs.

New pages honour the setting at once; rows already stored move to such pages as they are updated. To
repack an existing large table at once: ``VACUUM FULL images`` (it locks the table while it runs).
SQLite rewrites rows in place and has no such setting: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("images", "check_summaries")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
