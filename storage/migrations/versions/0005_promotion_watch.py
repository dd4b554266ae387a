"""Post-promotion watch and "nothing silent" (issue 12): promotion status ``rolled_back``, the
``promotion_watches`` table (one watch per applied promotion, resumed after a restart) and
``tuning_blocked`` (failures seen during a cooldown or rate limit, deduplicated per episode).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('pending_review', 'approved', 'applied', 'rejected', 'expired', 'failed')"
_NEW = "status IN ('pending_review', 'approved', 'applied', 'rejected', 'expired', 'failed', 'rolled_back')"


def _status_check(condition: str) -> None:
    # Batch mode: SQLite rebuilds the table with the new CHECK; PostgreSQL drops and adds the constraint.
    with op.batch_alter_table('promotions') as batch:
        batch.drop_constraint(op.f('ck_promotions_status'), type_='check')
        batch.create_check_constraint(op.f('ck_promotions_status'), condition)


def upgrade() -> None:
    _status_check(_NEW)
    op.create_table('promotion_watches',
    sa.Column('promotion_id', sa.Integer(), nullable=False),
    sa.Column('subsystem', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('baseline', sa.JSON(), nullable=True),
    sa.Column('progress', sa.JSON(), nullable=True),
    sa.Column('last_check_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.CheckConstraint("state IN ('watching', 'verified', 'rolled_back', 'stopped')", name=op.f('ck_promotion_watches_state')),
    sa.ForeignKeyConstraint(['promotion_id'], ['promotions.id'], name=op.f('fk_promotion_watches_promotion_id_promotions'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('promotion_id', name=op.f('pk_promotion_watches'))
    )
    op.create_index('ix_promotion_watches_state_until', 'promotion_watches', ['state', 'until'])
    op.create_table('tuning_blocked',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subsystem', sa.String(length=64), nullable=False),
    sa.Column('error_class', sa.String(length=64), nullable=False),
    sa.Column('cause', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("cause IN ('cooldown', 'rate_limited')", name=op.f('ck_tuning_blocked_cause')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tuning_blocked'))
    )
    op.create_index('ix_tuning_blocked_subsystem_error_class', 'tuning_blocked', ['subsystem', 'error_class'])
    op.create_index(op.f('ix_tuning_blocked_last_seen'), 'tuning_blocked', ['last_seen'])


def downgrade() -> None:
    op.drop_index(op.f('ix_tuning_blocked_last_seen'), table_name='tuning_blocked')
    op.drop_index('ix_tuning_blocked_subsystem_error_class', table_name='tuning_blocked')
    op.drop_table('tuning_blocked')
    op.drop_index('ix_promotion_watches_state_until', table_name='promotion_watches')
    op.drop_table('promotion_watches')
    op.execute("UPDATE promotions SET status = 'failed' WHERE status = 'rolled_back'")
    _status_check(_OLD)
