from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sigillo import config
from sigillo.config import ConfigError, DNSSettings, load_settings, system_nameservers


def test_embedded_defaults_match_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.smtp.listen_address == ("127.0.0.1", 2525)
    assert s.portal.listen_address == ("127.0.0.1", 8080)
    assert s.storage.database_url == "sqlite:///var/sigillo.db"
    assert s.delivery.default_tls == "verify"
    assert s.delivery.min_tls_version == "1.2"
    assert s.delivery.queue_lifetime == timedelta(days=5)
    assert s.notify.include_subject is False


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sigillo.toml"
    cfg.write_text(
        '[smtp]\nlisten = "127.0.0.1:2600"\nmax_message_size = "10MiB"\n'
        '[delivery]\nqueue_lifetime = "2h"\n[delivery.domains]\n"Yahoo.CO.JP" = "portal"\n'
        '".legacy.example" = "encrypt"\n[notify]\nfrom = "secure@bank.example"\n'
    )
    monkeypatch.setenv("SIGILLO_SMTP__LISTEN", "127.0.0.1:2700")
    s = load_settings(cfg)
    assert s.smtp.listen == "127.0.0.1:2700"
    assert s.smtp.max_message_size == 10 * 1024 * 1024
    assert s.delivery.queue_lifetime == timedelta(hours=2)
    assert s.delivery.domains == {"yahoo.co.jp": "portal", ".legacy.example": "encrypt"}
    assert s.notify.from_ == "secure@bank.example"
    assert s.notify.domain == "bank.example"


def test_dkim_key_lives_beside_the_keyring_unless_set(tmp_path: Path) -> None:
    cfg = tmp_path / "sigillo.toml"
    cfg.write_text('[storage]\nkey_file = "/srv/keys/sigillo.keys"\n')
    assert load_settings(cfg).notify.dkim_key_file == Path("/srv/keys/dkim.key")
    cfg.write_text('[notify]\ndkim_key_file = "/etc/dkim.pem"\n')
    assert load_settings(cfg).notify.dkim_key_file == Path("/etc/dkim.pem")


def test_phishing_domains_are_normalised(tmp_path: Path) -> None:
    cfg = tmp_path / "sigillo.toml"
    cfg.write_text('[phishing]\norg_domains = ["Bank.Example.", " ", "mail.bank.example"]\n')
    s = load_settings(cfg)
    assert s.phishing.org_domains == ["bank.example", "mail.bank.example"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[delivery]\ndefault_tls = "none"\n', "delivery.default_tls"),
        ('[delivery]\ndefault_tls = "may"\n', "delivery.default_tls"),
        ('[delivery.domains]\n"x.example" = "plaintext"\n', "delivery.domains"),
        ('[delivery]\nmin_tls_version = "1.0"\n', "delivery.min_tls_version"),
        ('[delivery]\nqueue_lifetime = "soon"\n', "delivery.queue_lifetime"),
        ('[smtp]\ntrusted_networks = ["10.0.0.0/33"]\n', "smtp.trusted_networks"),
        ('[delivery]\nca_file = "/nonexistent/ca.pem"\n', "delivery.ca_file"),
        ('[dns]\nnameservers = ["dns.example"]\n', "dns.nameservers"),
        ("[smtp]\nunknown_key = 1\n", "smtp.unknown_key"),
        ('[notify]\ndkim_selector = "bad selector"\n', "notify.dkim_selector"),
        ("[phishing]\norg_domains = []\n", "phishing.org_domains"),
        ('[phishing]\nreport_retention = "a month"\n', "phishing.report_retention"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert key in str(err.value)


def test_missing_and_unparseable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\nlisten=")
    with pytest.raises(ConfigError):
        load_settings(broken)


@pytest.mark.parametrize(
    ("nameservers", "trust_ad", "trusted"),
    [
        (["127.0.0.1:5353"], None, True),
        (["127.0.0.53", "[::1]:53"], None, True),
        (["127.0.0.1", "192.0.2.53"], None, False),  # one resolver across the network
        (["192.0.2.53"], None, False),
        (["192.0.2.53"], True, True),  # the operator vouches for the path
        (["127.0.0.1:5353"], False, False),
    ],
)
def test_ad_bit_trusted_only_from_loopback_unless_configured(
    nameservers: list[str], trust_ad: bool | None, trusted: bool
) -> None:
    dns_settings = DNSSettings.model_validate({"nameservers": nameservers, "trust_ad": trust_ad})
    assert dns_settings.ad_trusted is trusted


@pytest.mark.parametrize(
    ("system", "trusted"),
    [(["127.0.0.53"], True), (["127.0.0.53", "10.0.0.2"], False), ([], False)],
)
def test_ad_trust_for_the_system_resolver_follows_resolv_conf(
    monkeypatch: pytest.MonkeyPatch, system: list[str], trusted: bool
) -> None:
    monkeypatch.setattr(config, "system_nameservers", lambda: system)
    assert DNSSettings().ad_trusted is trusted
    assert DNSSettings(trust_ad=True).ad_trusted is True


def test_system_nameservers_reads_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n"
        "nameserver not-an-address\nnameserver\noptions edns0 trust-ad\n"
    )
    assert system_nameservers(resolv) == ["127.0.0.53", "fe80::1"]
    assert system_nameservers(tmp_path / "missing") == []


def test_trust_ad_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "sigillo.toml"
    cfg.write_text('[dns]\nnameservers = ["127.0.0.1:5353"]\ntrust_ad = false\n')
    assert load_settings(cfg).dns.ad_trusted is False
    monkeypatch.setenv("SIGILLO_DNS__TRUST_AD", "true")
    assert load_settings(cfg).dns.ad_trusted is True
