"""Typed configuration: one TOML file plus ``SIGILLO_<SECTION>__<KEY>`` environment overrides.

Every key, its default and its meaning live here and nowhere else. Contradictory settings are
rejected when the file is loaded, never discovered at delivery time.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_PATH = Path("sigillo.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _parse_duration(value: Any) -> Any:
    """Accept ``"5d"``, ``"15m"``, ``"30s"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '15m', '4h', '5d')")
        return timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2]])
    return value


def parse_duration(value: str) -> timedelta:
    """A duration typed by an operator (a command-line option); ValueError says what is wrong."""
    parsed = _parse_duration(value)
    if not isinstance(parsed, timedelta):
        raise ValueError(f"not a duration: {value!r}")
    return parsed


def _parse_size(value: Any) -> Any:
    """Accept ``"25MiB"``, ``"512k"`` or a number of bytes (binary multiples)."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. '25MiB', '512KiB', or bytes)")
        unit = match[2].lower()[0] if match[2] else None
        return int(match[1]) * _SIZE_UNITS[unit]
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
Size = Annotated[int, BeforeValidator(_parse_size)]

TLSLevel = Literal["verify", "encrypt", "portal"]
"""Per-domain TLS policy for message content. None of them permits plaintext."""


def system_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The system resolver's nameserver addresses (what an empty ``[dns] nameservers`` uses)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(words[1].split("%")[0])))
            except ValueError:
                continue
    return found


def _parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {value!r}")
    return host, int(port)


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SMTPSettings(_Section):
    listen: str = "127.0.0.1:2525"
    hostname: str = Field(default_factory=socket.getfqdn)
    """Name in the greeting, in EHLO to recipients' servers and in generated Message-IDs."""
    trusted_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    """Clients allowed to relay through sigillo; every other client gets 554."""
    max_message_size: Size = 25 * 1024**2
    max_recipients: int = Field(default=1000, ge=1)
    tls_cert_file: Path | None = None
    """Enables STARTTLS on the listener (together with tls_key_file)."""
    tls_key_file: Path | None = None
    require_starttls: bool = False

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_networks: {exc}") from None
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _parse_hostport(value, 25)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        return _parse_hostport(self.listen, 25)


class DNSSettings(_Section):
    nameservers: list[str] = []
    """``IP`` or ``IP:PORT``; empty means the system resolver."""
    timeout: Duration = timedelta(seconds=10)
    trust_ad: bool | None = None
    """Believe the AD (authenticated data) bit of answers: DNSSEC validated by the resolver.
    Unset: true exactly when every resolver is on loopback (a local validating resolver, as
    for Postfix's DANE); a resolver across the network could have its AD bit forged."""

    @property
    def ad_trusted(self) -> bool:
        if self.trust_ad is not None:
            return self.trust_ad
        hosts = [host for host, _ in self.servers] or system_nameservers()
        return bool(hosts) and all(ipaddress.ip_address(h).is_loopback for h in hosts)

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _ = _parse_hostport(server, 53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"nameservers: {server!r} is not IP or IP:PORT") from None
        return value

    @property
    def servers(self) -> list[tuple[str, int]]:
        return [_parse_hostport(s, 53) for s in self.nameservers]


class DeliverySettings(_Section):
    mx_port: int = Field(default=25, ge=1, le=65535)
    default_tls: TLSLevel = "verify"
    ca_file: str = ""
    """PEM bundle for ``verify``; empty means the system trust store."""
    min_tls_version: Literal["1.2", "1.3"] = "1.2"
    queue_lifetime: Duration = timedelta(days=5)
    retry_initial: Duration = timedelta(minutes=15)
    """First retry after a temporary failure (RFC 5321 4.5.4.1 asks for at least 30 minutes
    between attempts to one destination; 15m x 1.25^(n-1) crosses that after a few tries)."""
    retry_factor: float = Field(default=1.25, ge=1.0)
    retry_max: Duration = timedelta(hours=4)
    connect_timeout: Duration = timedelta(seconds=30)
    command_timeout: Duration = timedelta(minutes=5)
    """Per SMTP command; RFC 5321 4.5.3.2 suggests minutes, the whole attempt stays under lease."""
    lease: Duration = timedelta(minutes=30)
    """How long a worker owns a claimed queue entry; a crashed worker's claims return after it."""
    max_crashes: int = Field(default=5, ge=1)
    """Claims that ended without a result (a worker died) before an entry is set aside."""
    concurrency: int = Field(default=20, ge=1)
    poll_interval: Duration = timedelta(seconds=1)
    dsn_include_content: bool = False
    """DSNs to the sender carry the original headers only; true attaches the whole message."""
    dane: bool = True
    """Use the recipient domain's DANE TLSA records (RFC 7672) when DNSSEC vouches for them."""
    mta_sts: bool = True
    """Use the recipient domain's MTA-STS policy (RFC 8461); ``ca_file`` also validates the
    policy host's certificate."""
    domains: dict[str, TLSLevel] = {}
    """Per-domain override: ``"example.com"`` exact, ``".example.com"`` its subdomains."""

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: dict[str, TLSLevel]) -> dict[str, TLSLevel]:
        return {key.strip().lower().rstrip("."): level for key, level in value.items()}

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"ca_file {value!r} does not exist")
        return value


class TLSReportSettings(_Section):
    enabled: bool = True
    """Send a daily TLS report (RFC 8460) to domains that publish ``_smtp._tls``."""
    organization_name: str = "sigillo"
    contact_info: str = ""
    """Named in every report; empty: ``postmaster@<smtp.hostname>``."""


class RelaySettings(_Section):
    host: str = "127.0.0.1:25"
    """The organisation's mail server: DSNs and portal replies go there."""
    internal_domains: list[str] = ["org.example"]

    @property
    def address(self) -> tuple[str, int]:
        return _parse_hostport(self.host, 25)


class PortalSettings(_Section):
    listen: str = "127.0.0.1:8080"
    base_url: str = "http://127.0.0.1:8080"
    message_ttl_days: int = Field(default=90, ge=1)
    """A conversation closes this many days after its last message."""
    max_upload_size: Size = 25 * 1024**2
    """The whole of one reply: text and attachments."""
    contact: str = ""
    """Whom an expired conversation's page tells the recipient to contact; empty names the
    sender of its last message."""
    timezone: str = "UTC"
    """The zone the pages show times in (an IANA name such as "Europe/Rome")."""
    default_language: Literal["en", "it"] = "en"
    """Used when neither the language switch nor the browser's Accept-Language decides."""
    trusted_proxies: list[str] = []
    """Addresses of reverse proxies whose X-Forwarded-For gives the client address that
    sign-in throttling and the audit log see. Empty: the TCP peer is the client."""

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Europe/Rome)"
            ) from None
        return value

    @property
    def https(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def listen_address(self) -> tuple[str, int]:
        return _parse_hostport(self.listen, 8080)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"base_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/")


class NotifySettings(_Section):
    from_: str = Field(default="secure@org.example", alias="from")
    include_subject: bool = False
    dkim_selector: str = "sigillo"
    """Notifications, DSNs and account mail are DKIM-signed for the domain of ``from`` under
    this selector; ``sigillo dkim show`` prints the TXT record to publish."""
    dkim_key_file: Path = Path("var/dkim.key")
    """The RSA signing key (PEM, 0600), created on first run. Unset: ``dkim.key`` beside
    ``[storage] key_file``, so every key sigillo holds lives in one directory."""
    auto_answer: bool = True
    """Mail sent to the ``from`` address (a reply to a notification) gets one content-free
    answer pointing to the portal; the mail itself is never kept."""

    @field_validator("dkim_selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*", value):
            raise ValueError(f"not a DKIM selector: {value!r} (letters, digits, '-', '.')")
        return value

    @property
    def domain(self) -> str:
        return self.from_.rpartition("@")[2].lower()


class PhishingSettings(_Section):
    org_domains: list[str] = ["org.example"]
    """The organisation's sending domains; their subdomains count as the organisation's."""
    org_names: list[str] = []
    """Names the organisation goes by ("Banca Amica"): a display name claiming one of them
    from another domain is an imitation. The first label of each org domain always counts."""
    report_address: str = "phish-report@org.example"
    """Suspect mail forwarded here is checked and kept for staff to review, never relayed."""
    report_retention: Duration = timedelta(days=30)
    """How long a report (and the mail it carries) is kept after it arrived."""
    trusted_authserv_ids: list[str] = []
    """Authentication-Results headers are believed only from these authserv-ids (the
    organisation's own border MTAs, which strip forged ones; RFC 8601 section 5)."""
    dkim_keys: dict[str, str] = {}
    """Known DKIM public keys of the organisation's other mail servers, as
    ``"selector._domainkey.domain" = "v=DKIM1; k=rsa; p=..."``; sigillo's own key is always
    known. Checks verify these offline."""
    dkim_dns: bool = False
    """Also fetch DKIM keys from DNS (through ``[dns] nameservers``) for signatures no known
    key covers. Off: such signatures are reported as unverifiable, never as passing."""

    @field_validator("org_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        domains = [d.strip().strip(".").lower() for d in value if d.strip()]
        if not domains:
            raise ValueError("org_domains must name at least one domain")
        return domains


class RetentionSettings(_Section):
    delivered_content: Duration = timedelta(days=7)
    """Content of a message none of whose copies went to the portal is destroyed this long
    after its last copy reached a final state (delivered over TLS or bounced). Portal
    conversations follow ``[portal] message_ttl_days`` or their domain's console policy."""
    interval: Duration = timedelta(days=1)
    """How often ``serve`` (worker role) runs the retention job; it also runs at start."""

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("retention interval must be at least 1m")
        return value


class StaffSettings(_Section):
    enrolment_valid: Duration = timedelta(days=3)
    """How long the link printed by ``sigillo staff add`` can be used."""


class StorageSettings(_Section):
    database_url: str = "sqlite:///var/sigillo.db"
    key_file: Path = Path("var/sigillo.keys")
    """Key-encryption keys (0600), created on first run."""
    auto_migrate: bool = True
    """``serve`` brings the schema to the current version on start."""

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(
            ("sqlite://", "postgresql://", "postgresql+asyncpg://", "sqlite+aiosqlite://")
        ):
            raise ValueError("database_url must be sqlite:///PATH or postgresql://...")
        return value


class Settings(BaseSettings):
    smtp: SMTPSettings = SMTPSettings()
    dns: DNSSettings = DNSSettings()
    delivery: DeliverySettings = DeliverySettings()
    relay: RelaySettings = RelaySettings()
    tlsrpt: TLSReportSettings = TLSReportSettings()
    portal: PortalSettings = PortalSettings()
    notify: NotifySettings = NotifySettings()
    phishing: PhishingSettings = PhishingSettings()
    retention: RetentionSettings = RetentionSettings()
    staff: StaffSettings = StaffSettings()
    storage: StorageSettings = StorageSettings()

    @model_validator(mode="after")
    def _dkim_key_beside_the_keyring(self) -> Settings:
        if "dkim_key_file" not in self.notify.model_fields_set:
            self.notify.dkim_key_file = self.storage.key_file.parent / "dkim.key"
        return self

    model_config = SettingsConfigDict(
        env_prefix="SIGILLO_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the key and the problem."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load ``path`` (or ./sigillo.toml when present), then environment, then ``overrides``."""
    if path is None:
        path = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    elif not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    file_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
    bound: type[Settings] = type("FileSettings", (Settings,), {"model_config": file_config})
    try:
        return bound(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
