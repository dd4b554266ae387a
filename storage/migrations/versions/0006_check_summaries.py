"""Unchanged checks stay small (issue 15): ``check_summaries``, one row per image counting the
unchanged checks summarised instead of stored, with the time of the last sampled check row kept for
trend charts. See storage.retention.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('check_summaries',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('unchanged_checks', sa.BigInteger(), nullable=False),
    sa.Column('sampled_checks', sa.BigInteger(), nullable=False),
    sa.Column('first_unchanged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_unchanged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_sample_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_sample_check_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_check_summaries_image_id_images'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', name=op.f('pk_check_summaries'))
    )


def downgrade() -> None:
    op.drop_table('check_summaries')
