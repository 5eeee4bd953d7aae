"""transport security: REQUIRETLS flag, the authorising TLS policy of each attempt,
MTA-STS policy cache, TLS report counts

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sigillo.store.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("requiretls", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("tls_policy", sa.String(length=16), nullable=True))
    op.create_table(
        "mta_sts_policies",
        sa.Column("domain", sa.String(length=255), primary_key=True),
        sa.Column("policy_id", sa.String(length=64), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("mx", sa.JSON(), nullable=True),
        sa.Column("max_age", sa.Integer(), nullable=True),
        sa.Column("policy_text", sa.Text(), nullable=True),
        sa.Column("fetched_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_mta_sts_policies_expires_at", "mta_sts_policies", ["expires_at"])
    op.create_table(
        "tlsrpt_counts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("policy_domain", sa.String(length=255), nullable=False),
        sa.Column("policy_type", sa.String(length=16), nullable=False),
        sa.Column("policy_hash", sa.String(length=64), nullable=False),
        sa.Column("policy_strings", sa.JSON(), nullable=False),
        sa.Column("receiving_mx", sa.String(length=255), nullable=False),
        sa.Column("receiving_ip", sa.String(length=64), nullable=False),
        sa.Column("result_type", sa.String(length=48), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_index(
        "ux_tlsrpt_counts_key",
        "tlsrpt_counts",
        [
            "day",
            "policy_domain",
            "policy_type",
            "policy_hash",
            "receiving_mx",
            "receiving_ip",
            "result_type",
        ],
        unique=True,
    )
    op.create_index("ix_tlsrpt_counts_policy_domain", "tlsrpt_counts", ["policy_domain"])
    op.create_table(
        "tlsrpt_sent",
        sa.Column("day", sa.String(length=10), primary_key=True),
        sa.Column("policy_domain", sa.String(length=255), primary_key=True),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tlsrpt_sent")
    op.drop_table("tlsrpt_counts")
    op.drop_table("mta_sts_policies")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("tls_policy")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("requiretls")
