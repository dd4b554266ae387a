"""Widen heals.action from 32 to 255 characters: custom healing actions are recorded by their full
``module:function`` name, which often exceeds 32 (PostgreSQL refused those rows; they were cut short).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table (it cannot ALTER a column type); PostgreSQL alters in place.
    with op.batch_alter_table('heals') as batch:
        batch.alter_column('action', existing_type=sa.String(length=32), type_=sa.String(length=255),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('heals') as batch:
        batch.alter_column('action', existing_type=sa.String(length=255), type_=sa.String(length=32),
                           existing_nullable=False)
