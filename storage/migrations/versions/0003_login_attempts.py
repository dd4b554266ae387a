"""Dashboard login throttling: failed logins per operator name and per client, shared by every session
and dashboard process (a per-browser-session counter let 30 of 30 guesses through from fresh sessions).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('login_attempts',
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("scope IN ('operator', 'client')", name=op.f('ck_login_attempts_scope')),
    sa.PrimaryKeyConstraint('scope', 'key', name=op.f('pk_login_attempts'))
    )


def downgrade() -> None:
    op.drop_table('login_attempts')
