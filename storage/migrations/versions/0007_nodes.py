"""Many hosts, one PostgreSQL (issue 15): ``images.node`` (the worker node that checks and heals an
image), ``worker_heartbeats.node`` and the ``leader_jobs`` table (the last period each global job was
claimed by the fleet's leader; storage.leader).

Existing images keep ``node`` NULL: they were registered before nodes existed, and the leader adopts
them (storage.nodes.adopt_unowned) — on SQLite the one worker, on PostgreSQL the first leader, which
after an upgrade is normally the host that ran the single worker until then. `selfheal images assign`
moves them elsewhere.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('node', sa.String(length=255), nullable=True))
        batch.create_index(op.f('ix_images_node'), ['node'], unique=False)
    with op.batch_alter_table('worker_heartbeats') as batch:
        batch.add_column(sa.Column('node', sa.String(length=255), nullable=True))
    op.create_table('leader_jobs',
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('slot', sa.BigInteger(), nullable=False),
    sa.Column('node', sa.String(length=255), nullable=False),
    sa.Column('ran_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('runs', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('job', name=op.f('pk_leader_jobs'))
    )


def downgrade() -> None:
    op.drop_table('leader_jobs')
    with op.batch_alter_table('worker_heartbeats') as batch:
        batch.drop_column('node')
    with op.batch_alter_table('images') as batch:
        batch.drop_index(op.f('ix_images_node'))
        batch.drop_column('node')
