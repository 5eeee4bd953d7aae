"""Relational schema. Content lives only in ``messages.content``, encrypted; the rest is
envelope and bookkeeping that routing and auditing need in the clear."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone and returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class JobKind(enum.StrEnum):
    DELIVER = "deliver"
    """A recipient's copy of message content: strict TLS or the portal, nothing else."""
    NOTIFY = "notify"
    """A content-free portal notification: opportunistic TLS allowed."""
    DSN = "dsn"
    """A delivery status notification to the internal sender, through the relay."""
    RELAY = "relay"
    """A reply written in the portal, to the staff member, through the relay."""
    MAIL = "mail"
    """Mail to a portal user about their account (reset link, password changed), or the copy
    of a reply they asked for: opportunistic TLS, like a notification."""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    """Content delivered over TLS meeting the domain's policy (or notification/DSN sent)."""
    PORTAL = "portal"
    """Content kept; the recipient reads it in the portal."""
    BOUNCED = "bounced"
    HELD = "held"
    """Set aside by an operator or after repeatedly crashing workers."""
    FAILED = "failed"
    """A notification or DSN that could not be sent; nothing else to do."""


FINAL_STATES = frozenset({JobState.DELIVERED, JobState.PORTAL, JobState.BOUNCED, JobState.FAILED})


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    received_at: Mapped[datetime]
    mail_from: Mapped[str] = mapped_column(String(320))
    client_address: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str] = mapped_column(String(32), index=True)
    """The key-encryption key that wraps ``wrapped_key``; indexed so that ``sigillo keys
    rotate`` can tell cheaply whether a key is still in use."""
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    """AES-256-GCM nonce || ciphertext of the raw RFC 5322 message."""
    message_id_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    """SHA-256 of the Message-ID, so replies can be threaded without keeping headers in clear."""
    requiretls: Mapped[bool] = mapped_column(Boolean, default=False)
    """Sent with ``MAIL FROM:<...> REQUIRETLS`` (RFC 8689): each copy goes only to a peer that
    advertises REQUIRETLS over DANE- or MTA-STS-authenticated TLS, otherwise to the portal."""

    jobs: Mapped[list[Job]] = relationship(back_populates="message")


class Job(Base):
    """One unit of outbound work: a recipient's copy, a notification or a DSN."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    state: Mapped[JobState] = mapped_column(_enum(JobState))
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    """For a DSN: the recipient job it reports on."""
    recipient: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    """Claims since the last recorded result; a worker that dies mid-attempt leaves one."""
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    """Why the job ended as it did (portal reason, bounce diagnostic)."""

    message: Mapped[Message | None] = relationship(back_populates="jobs")
    attempt_records: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.id"
    )

    __table_args__ = (
        Index("ix_jobs_due", "state", "next_attempt_at"),
        Index("ix_jobs_message", "message_id", "domain"),
    )


class Attempt(Base):
    """What happened when a worker tried a job: the evidence behind every outcome."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    """``tls``, ``portal``, ``deferred``, ``bounced``, ``sent`` (notifications/DSNs)."""
    reason: Mapped[str | None] = mapped_column(Text)
    mx_host: Mapped[str | None] = mapped_column(String(255))
    mx_ip: Mapped[str | None] = mapped_column(String(64))
    tls_version: Mapped[str | None] = mapped_column(String(16))
    tls_cipher: Mapped[str | None] = mapped_column(String(64))
    cert_verified: Mapped[bool | None]
    verification: Mapped[str | None] = mapped_column(String(64))
    """How the peer was authenticated: ``ca_file``, ``system``, ``none (encrypt)``."""
    tls_policy: Mapped[str | None] = mapped_column(String(16))
    """The policy layer that authorised the TLS session: ``dane``, ``mta-sts``, ``verify`` or
    ``encrypt``; None when no session carried content (the reason says why)."""
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)
    """Per-MX trail of the attempt (each host tried and why it was left)."""

    job: Mapped[Job] = relationship(back_populates="attempt_records")


class Conversation(Base):
    """The portal thread of one external address: every message to and from it, in order."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    created_at: Mapped[datetime]
    last_message_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    """A date set by staff; otherwise the conversation expires its retention period after
    ``last_message_at`` (see ``sigillo.policies``)."""
    withdrawn_at: Mapped[datetime | None]
    """Recalled by the sender: the recipient sees that it was withdrawn, never its content."""
    withdrawn_by: Mapped[str | None] = mapped_column(String(320))
    shredded_at: Mapped[datetime | None]
    """When its content was destroyed (retention, withdrawal or erasure): the messages' data
    keys and rows are gone, only this envelope row stays."""


class ConversationMessage(Base):
    __tablename__ = "conversation_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"))
    direction: Mapped[str] = mapped_column(String(8))
    """``out`` (organisation to recipient) or ``in`` (a reply written in the portal)."""
    added_at: Mapped[datetime]


class PortalToken(Base):
    """A notification link. Only the SHA-256 of the token is stored."""

    __tablename__ = "portal_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime]


class Account(Base):
    """A portal user: one external address and the password that opens its conversations."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    """Lower-cased; the account reaches only conversations whose recipient is this address."""
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    phrase_kek_id: Mapped[str | None] = mapped_column(String(32))
    phrase_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    security_phrase: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The personal security phrase every notification shows, chosen at the first visit
    (optional); sealed like message content under ``portal-phrase:<id>``."""


class PortalSession(Base):
    """A signed-in browser. Only the SHA-256 of the cookie value is stored."""

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    client_address: Mapped[str] = mapped_column(String(64))


class PasswordReset(Base):
    """A single-use reset link. Only the SHA-256 of the token is stored."""

    __tablename__ = "password_resets"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class LoginThrottle(Base):
    """Recent sign-in failures of one address (``account:``) or one client (``client:``).

    Keyed by the address typed, whether or not an account exists, so a lockout tells
    nothing about who has an account."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]


class AuditEvent(Base):
    """Who did what to which personal data, when and from where. Never content, never
    passwords. Append-only (database triggers refuse UPDATE and DELETE) and hash-chained:
    ``hash`` covers this entry and ``prev_hash``, so an edit, a deletion or a reordering
    breaks the chain at the first entry touched (``sigillo audit verify``)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    """Position in the chain: 1, 2, 3... without gaps."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(320))
    """The address or staff account acting; ``-`` when unknown."""
    action: Mapped[str] = mapped_column(String(64), index=True)
    client_address: Mapped[str | None] = mapped_column(String(64))
    conversation_id: Mapped[int | None] = mapped_column(Integer, index=True)
    message_id: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)


class AuditHead(Base):
    """The chain's last entry, one row. Writers lock it to append (so entries from every
    process form one chain), and a deleted tail shows as a head the entries do not reach."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class StaffRole(enum.StrEnum):
    ADMIN = "admin"
    """Staff accounts, domain policies, retention. No content."""
    OPERATOR = "operator"
    """Queue, delivery records, TLS outcomes; retry, hold, bounce. No content."""
    AUDITOR = "auditor"
    """Reads and exports the audit log. No content."""
    AGENT = "agent"
    """Opens a conversation's content after stating a purpose, each time; withdraws
    conversations and changes their expiry."""


class StaffAccount(Base):
    """A member of staff using the console. Password and TOTP are both required to sign in."""

    __tablename__ = "staff_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    """Lower-cased."""
    roles: Mapped[str] = mapped_column(String(64))
    """Comma-separated ``StaffRole`` values, e.g. ``admin,agent``."""
    password_hash: Mapped[str | None] = mapped_column(String(255))
    """argon2id; None until the person has used their enrolment link."""
    totp_kek_id: Mapped[str | None] = mapped_column(String(32))
    totp_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The TOTP secret sealed like message content (``Keyring.seal`` with associated data
    ``staff-totp:<id>``), so a copy of the database alone yields no second factor."""
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    """The last accepted TOTP time step: a code is never accepted twice."""
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(320))
    enrolled_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]


class StaffEnrolment(Base):
    """A single-use enrolment link from ``sigillo staff add``. Only its SHA-256 is stored."""

    __tablename__ = "staff_enrolments"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_accounts.id"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class StaffSession(Base):
    """A signed-in console browser. Only the SHA-256 of the cookie value is stored."""

    __tablename__ = "staff_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_accounts.id"), index=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    client_address: Mapped[str] = mapped_column(String(64))


class DomainPolicy(Base):
    """A recipient domain's policy set in the console: TLS level and how long its portal
    conversations are kept. ``[delivery.domains]`` in the config file wins over ``tls``."""

    __tablename__ = "domain_policies"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    """``example.com`` exactly, or ``.example.com`` for its subdomains."""
    tls: Mapped[str | None] = mapped_column(String(16))
    """``verify``, ``encrypt`` or ``portal``; None keeps the configured default."""
    retention_days: Mapped[int | None] = mapped_column(Integer)
    """Days a portal conversation is kept after its last message; None: ``[portal]
    message_ttl_days``."""
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(320))


class PhishingReport(Base):
    """Suspect mail someone forwarded to ``[phishing] report_address``: the check's result in
    the clear for the console's list, the mail itself sealed as a ``messages`` row (which no
    job ever delivers)."""

    __tablename__ = "phishing_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    reporter: Mapped[str] = mapped_column(String(320))
    """The envelope sender that forwarded it."""
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id"), index=True)
    """None once retention destroyed the mail."""
    verdict: Mapped[str] = mapped_column(String(16))
    findings: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    """``[{"code": ..., "severity": ...}]``: the codes only; the evidence is in the mail."""
    reviewed_at: Mapped[datetime | None]
    reviewed_by: Mapped[str | None] = mapped_column(String(320))


class AutoAnswer(Base):
    """When a sender last got the automatic answer to mail sent to the notification address:
    at most one a day each (RFC 3834 section 2). Only a keyed hash of the address is kept."""

    __tablename__ = "auto_answers"

    sender_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    answered_at: Mapped[datetime] = mapped_column(index=True)


class MtaStsPolicy(Base):
    """A recipient domain's MTA-STS policy (RFC 8461) as last fetched, with the state of its
    refresh. A policy is used until ``expires_at``; a failed refetch keeps it."""

    __tablename__ = "mta_sts_policies"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    policy_id: Mapped[str | None] = mapped_column(String(64))
    """The ``id`` of the ``_mta-sts`` TXT record the policy was fetched for."""
    mode: Mapped[str | None] = mapped_column(String(16))
    """``enforce``, ``testing`` or ``none``; None: no valid policy is cached."""
    mx: Mapped[list[str] | None] = mapped_column(JSON)
    max_age: Mapped[int | None] = mapped_column(Integer)
    policy_text: Mapped[str | None] = mapped_column(Text)
    """The policy as fetched (at most 64 KiB): what TLS reports quote."""
    fetched_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    last_attempt_at: Mapped[datetime | None]
    """When a fetch was last tried: attempts are rate-limited per domain."""
    last_error: Mapped[str | None] = mapped_column(Text)


class TLSReportCount(Base):
    """Sessions counted for a TLS report (RFC 8460): per day, policy and result type."""

    __tablename__ = "tlsrpt_counts"
    __table_args__ = (
        Index(
            "ux_tlsrpt_counts_key",
            "day",
            "policy_domain",
            "policy_type",
            "policy_hash",
            "receiving_mx",
            "receiving_ip",
            "result_type",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[str] = mapped_column(String(10))
    """UTC date, ``YYYY-MM-DD``."""
    policy_domain: Mapped[str] = mapped_column(String(255), index=True)
    policy_type: Mapped[str] = mapped_column(String(16))
    """``tlsa``, ``sts`` or ``no-policy-found``."""
    policy_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of ``policy_strings`` joined: the count's key without the text."""
    policy_strings: Mapped[list[str]] = mapped_column(JSON)
    receiving_mx: Mapped[str] = mapped_column(String(255))
    receiving_ip: Mapped[str] = mapped_column(String(64))
    result_type: Mapped[str] = mapped_column(String(48))
    """``success`` for a successful session, else an RFC 8460 result type."""
    count: Mapped[int] = mapped_column(Integer, default=0)


class TLSReportSent(Base):
    """A day's report to a domain, once sent (or given up on): never sent twice."""

    __tablename__ = "tlsrpt_sent"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    policy_domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    sent_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(Text)
