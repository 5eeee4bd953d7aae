"""data protection: hash-chained append-only audit, staff console, domain policies,
conversation withdrawal, expiry and shredding

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sigillo.store.audit import GENESIS, Entry
from sigillo.store.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_when = sa.DateTime(timezone=True)

_PG_APPEND_ONLY = [
    """CREATE FUNCTION sigillo_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END
$$""",
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION sigillo_audit_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION sigillo_audit_append_only()",
]

_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
]


def _chain_existing_entries() -> tuple[int, str]:
    """Chain the entries written before the chain existed, in the order they were written."""
    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id", sa.Integer),
        sa.column("at", UTCDateTime()),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("client_address", sa.String),
        sa.column("conversation_id", sa.Integer),
        sa.column("message_id", sa.String),
        sa.column("details", sa.JSON),
        sa.column("seq", sa.BigInteger),
        sa.column("prev_hash", sa.String),
        sa.column("hash", sa.String),
    )
    seq, prev = 0, GENESIS
    rows = bind.execute(sa.select(events).order_by(events.c.id)).mappings().all()
    for row in rows:
        seq += 1
        digest = Entry(
            seq,
            row["at"],
            row["actor"],
            row["action"],
            row["client_address"],
            row["conversation_id"],
            row["message_id"],
            row["details"],
        ).hash(prev)
        bind.execute(
            events.update()
            .where(events.c.id == row["id"])
            .values(seq=seq, prev_hash=prev, hash=digest)
        )
        prev = digest
    return seq, prev


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    seq, head = _chain_existing_entries()
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", nullable=False, existing_type=sa.BigInteger())
        batch.alter_column("prev_hash", nullable=False, existing_type=sa.String(length=64))
        batch.alter_column("hash", nullable=False, existing_type=sa.String(length=64))
        batch.create_unique_constraint("uq_audit_events_seq", ["seq"])
    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(audit_head, [{"id": 1, "seq": seq, "hash": head}])
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_APPEND_ONLY if postgres else _SQLITE_APPEND_ONLY:
        op.execute(statement)

    op.create_index("ix_messages_kek_id", "messages", ["kek_id"])

    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("expires_at", _when, nullable=True))
        batch.add_column(sa.Column("withdrawn_at", _when, nullable=True))
        batch.add_column(sa.Column("withdrawn_by", sa.String(length=320), nullable=True))
        batch.add_column(sa.Column("shredded_at", _when, nullable=True))

    op.create_table(
        "staff_accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("roles", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("totp_kek_id", sa.String(length=32), nullable=True),
        sa.Column("totp_wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("totp_secret", sa.LargeBinary(), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _when, nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("enrolled_at", _when, nullable=True),
        sa.Column("disabled_at", _when, nullable=True),
        sa.Column("last_login_at", _when, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "staff_enrolments",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), sa.ForeignKey("staff_accounts.id"), nullable=False),
        sa.Column("created_at", _when, nullable=False),
        sa.Column("expires_at", _when, nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_staff_enrolments_staff_id", "staff_enrolments", ["staff_id"])
    op.create_table(
        "staff_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), sa.ForeignKey("staff_accounts.id"), nullable=False),
        sa.Column("created_at", _when, nullable=False),
        sa.Column("last_seen_at", _when, nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_staff_sessions_staff_id", "staff_sessions", ["staff_id"])
    op.create_table(
        "domain_policies",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("tls", sa.String(length=16), nullable=True),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", _when, nullable=False),
        sa.Column("updated_by", sa.String(length=320), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )


def downgrade() -> None:
    op.drop_table("domain_policies")
    op.drop_table("staff_sessions")
    op.drop_table("staff_enrolments")
    op.drop_table("staff_accounts")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("shredded_at")
        batch.drop_column("withdrawn_by")
        batch.drop_column("withdrawn_at")
        batch.drop_column("expires_at")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION sigillo_audit_append_only()")
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
    op.drop_table("audit_head")
    op.drop_index("ix_messages_kek_id", "messages")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_seq", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
