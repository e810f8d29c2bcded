"""Fine-tuning jobs: tokens trained on, the result files, and the model a job continues from

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs written before stay valid (no tokens counted, no result files, a plain base model).
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trained_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("result_files", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("init_from", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("init_from")
        batch_op.drop_column("result_files")
        batch_op.drop_column("trained_tokens")
