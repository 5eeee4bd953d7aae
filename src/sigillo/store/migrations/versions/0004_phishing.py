"""anti-phishing: security phrases, phishing reports, automatic-answer rate limit

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sigillo.store.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("phrase_kek_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("phrase_wrapped_key", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("security_phrase", sa.LargeBinary(), nullable=True))
    op.create_table(
        "phishing_reports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("reporter", sa.String(length=320), nullable=False),
        sa.Column("message_id", sa.String(length=32), sa.ForeignKey("messages.id"), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("reviewed_at", UTCDateTime(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=320), nullable=True),
    )
    op.create_index("ix_phishing_reports_received_at", "phishing_reports", ["received_at"])
    op.create_index("ix_phishing_reports_message_id", "phishing_reports", ["message_id"])
    op.create_table(
        "auto_answers",
        sa.Column("sender_hash", sa.String(length=64), primary_key=True),
        sa.Column("answered_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_auto_answers_answered_at", "auto_answers", ["answered_at"])


def downgrade() -> None:
    op.drop_table("auto_answers")
    op.drop_table("phishing_reports")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("security_phrase")
        batch.drop_column("phrase_wrapped_key")
        batch.drop_column("phrase_kek_id")
