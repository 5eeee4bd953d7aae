"""A throw-away Postfix instance that plays the recipients' mail servers.

One instance serves several *listeners*: one ``inet`` service per loopback address, all on the
same port, each with its own TLS behaviour (see `Listener`). Mail for `domains` lands in one
Maildir; `discard_domains` are accepted and thrown away (a sink for benchmarks). Anything else is
refused at RCPT time ("Relay access denied"), so a test that sends to the wrong domain fails
loudly instead of queueing.

Which listener received a message: every listener announces its own ``myhostname``
(`Listener.hostname`, e.g. ``listener-127-23-41-2.peer.invalid``), and Postfix writes that name
into the ``by`` clause of the Received header it prepends. `ReceivedMail.listener` maps it back
to the listener's address. ``smtpd_tls_received_header = yes`` makes the same header say
``(using TLSv1.3 with cipher ...)`` for a TLS hop, which becomes `ReceivedMail.tls`.

Where it lives: the ``postfix`` and ``nobody`` users must reach the instance's directories, and
pytest's temporary directories are private (mode 0700). So while it runs, the instance lives in
a fresh directory under /tmp, with the symlink ``WORKDIR/postfix`` pointing there; `stop` moves
that directory to ``WORKDIR/postfix`` (the log and the Maildir stay readable, nothing is left in
/tmp) and a later `start` moves it back out, keeping queue, Maildir and log. Inside:
``sigillo-peer-etc/`` (main.cf, master.cf, tls/ with the CA's certificate ``ca.pem``),
``spool/`` (queue_directory), ``data/`` (data_directory, owned by postfix), ``mail/all/`` (the
Maildir, owned by nobody) and ``postfix.log`` (maillog_file).

Other roles: `extra_main_cf` adds main.cf settings or replaces the peer's own (a value of None
drops a setting, so Postfix's built-in default applies). Values may use ``$config_directory``,
e.g. ``smtp_tls_CAfile = $config_directory/tls/ca.pem`` (`PostfixPeer.ca_file`). A relaying
instance built this way is `tests.peers.relay.PostfixRelay`.
"""

from __future__ import annotations

import contextlib
import email.policy
import errno
import fcntl
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Literal

import trustme

from tests.peers.ca import CertFiles, issue_server_cert, mismatched_cert, self_signed_cert
from tests.peers.net import free_loopback_block, free_port, wait_for_tcp
from tests.peers.proc import run_with_tty

__all__ = [
    "Listener",
    "ListenerMode",
    "PostfixPeer",
    "ReceivedMail",
    "free_loopback_block",
    "free_port",
]

ListenerMode = Literal["tls", "plain", "wrongname", "broken"]

DEFAULT_CONFIG_DIR = Path("/etc/postfix")
WRONG_NAME = "wrong.invalid"
_CONF_DIR_NAME = "sigillo-peer-etc"  # marks our entries in alternate_config_directories
_MAILDIR_NAME = "all"


@dataclass(frozen=True)
class Listener:
    """One SMTP service of the instance, bound to `address` on the instance's port.

    tls: STARTTLS with a certificate for `names`, issued by the instance's CA.
    plain: no STARTTLS offered at all.
    wrongname: STARTTLS with a self-signed certificate for ``wrong.invalid``.
    broken: advertises STARTTLS, but the certificate and key do not belong together, so
        Postfix answers ``454 4.7.0 TLS not available due to local problem``.
    """

    address: str
    mode: ListenerMode
    names: tuple[str, ...] = ()

    @property
    def hostname(self) -> str:
        """The name this listener greets with and writes into its Received headers."""
        return "listener-" + self.address.replace(".", "-") + ".peer.invalid"


@dataclass(frozen=True)
class ReceivedMail:
    """One message as delivered into the peer's Maildir."""

    raw: bytes
    message: EmailMessage
    recipient: str
    """The envelope recipient, from the Delivered-To header."""
    listener: str
    """The address of the listener that received the message ("" if it cannot be told)."""
    tls: str | None
    """The TLS protocol of the last hop, e.g. "TLSv1.3"; None when that hop was plaintext."""


_BY_RE = re.compile(r"\bby\s+(\S+)\s+\(Postfix\)")
_TLS_RE = re.compile(r"\(using\s+(TLSv[0-9.]+|SSLv[0-9.]+)\s+with\s+cipher\b")
_PARSER = BytesParser(_class=EmailMessage, policy=email.policy.default)


def parse_delivered(raw: bytes, listeners_by_hostname: dict[str, str]) -> ReceivedMail:
    """Parse a file of the peer's Maildir; `listeners_by_hostname` maps hostname -> address."""
    message = _PARSER.parsebytes(raw)
    recipient = str(message.get("Delivered-To", ""))
    listener = ""
    tls: str | None = None
    for header in message.get_all("Received") or []:
        text = " ".join(str(header).split())
        by = _BY_RE.search(text)
        if by is None or by.group(1) not in listeners_by_hostname:
            continue
        listener = listeners_by_hostname[by.group(1)]
        using = _TLS_RE.search(text)
        tls = using.group(1) if using else None
        break
    return ReceivedMail(raw=raw, message=message, recipient=recipient, listener=listener, tls=tls)


@contextlib.contextmanager
def _locked_default_config() -> Iterator[None]:
    """Hold an exclusive flock on /etc/postfix while editing its main.cf.

    Every PostfixPeer (in any process) takes this lock around its read-modify-write of
    ``alternate_config_directories``, so concurrent test runs do not lose each other's entries.
    """
    fd = os.open(DEFAULT_CONFIG_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _alternate_dirs() -> list[str]:
    """The entries of ``alternate_config_directories`` in /etc/postfix/main.cf, unexpanded.

    Read here rather than with ``postconf -h``: Postfix pauses up to two seconds before reading a
    main.cf modified within the last second ("let it cool down"), and we have just modified it.
    """
    value = ""
    logical: list[str] = []
    for line in (DEFAULT_CONFIG_DIR / "main.cf").read_text().splitlines():
        if line[:1].isspace() and logical:  # a continuation line
            logical[-1] += " " + line.strip()
        elif line.strip() and not line.lstrip().startswith("#"):
            logical.append(line)
    for line in logical:
        name, _, rest = line.partition("=")
        if name.strip() == "alternate_config_directories":
            value = rest  # the last definition wins, as in Postfix
    return [entry for entry in re.split(r"[\s,]+", value) if entry]


def _set_alternate_dirs(entries: Sequence[str]) -> None:
    subprocess.run(
        [
            "postconf",
            "-c",
            str(DEFAULT_CONFIG_DIR),
            "-e",
            "alternate_config_directories = " + ", ".join(entries),
        ],
        check=True,
        capture_output=True,
    )


def _register(config_dir: Path) -> None:
    with _locked_default_config():
        current = _alternate_dirs()
        # Forget entries of earlier peers whose directories are gone (e.g. a killed test run).
        kept = [
            e for e in current if not (e.endswith("/" + _CONF_DIR_NAME) and not Path(e).is_dir())
        ]
        if str(config_dir) not in kept:
            kept.append(str(config_dir))
        if kept != current:
            _set_alternate_dirs(kept)


def _unregister(config_dir: Path) -> None:
    with _locked_default_config():
        current = _alternate_dirs()
        kept = [e for e in current if e != str(config_dir)]
        if kept != current:
            _set_alternate_dirs(kept)


def _move_tree(source: Path, target: Path) -> None:
    """Move a stopped instance's directory; across file systems, only its log and Maildir."""
    try:
        source.rename(target)  # `target` is absent or an empty directory
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target.mkdir(exist_ok=True)
        if (source / "mail").is_dir():
            shutil.copytree(source / "mail", target / "mail", symlinks=True, dirs_exist_ok=True)
        if (source / "postfix.log").is_file():
            shutil.copy2(source / "postfix.log", target / "postfix.log")
        shutil.rmtree(source)


def _children_of(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


RECIPIENT_ACCESS = (
    "/^defer-/ 450 4.2.0 Mailbox busy, try again later\n/^reject-/ 550 5.1.1 No such user here\n"
)
"""Recipients whose local part starts with ``defer-`` get a 4xx, ``reject-`` a 5xx, at RCPT."""


class PostfixPeer:
    """A Postfix instance with several listeners; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        listeners: list[Listener],
        ca: trustme.CA,
        domains: list[str],
        discard_domains: Sequence[str] = (),
        message_size_limit: int = 100 * 1024 * 1024,
        extra_main_cf: Mapping[str, str | None] | None = None,
    ) -> None:
        if not listeners:
            raise ValueError("a PostfixPeer needs at least one listener")
        addresses = [listener.address for listener in listeners]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"listener addresses must be distinct: {addresses}")
        for listener in listeners:
            if listener.mode == "tls" and not listener.names:
                raise ValueError(f"listener {listener.address} has mode tls but no names")
        overlap = set(domains) & set(discard_domains)
        if overlap:
            raise ValueError(f"domains both delivered and discarded: {sorted(overlap)}")
        self.workdir = workdir
        self.port = port
        self.listeners = list(listeners)
        self.ca = ca
        self.domains = list(domains)
        self.discard_domains = list(discard_domains)
        self.message_size_limit = message_size_limit
        self.extra_main_cf = dict(extra_main_cf or {})
        self._root: Path | None = None
        self._registered = False
        self._by_hostname = {listener.hostname: listener.address for listener in listeners}

    # -- layout -----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The instance's directory: under /tmp while running, `home` after `stop`."""
        if self._root is None:
            raise RuntimeError("the peer has not been started")
        return self._root

    @property
    def config_dir(self) -> Path:
        return self.root / _CONF_DIR_NAME

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / _MAILDIR_NAME

    @property
    def log_path(self) -> Path:
        return self.root / "postfix.log"

    @property
    def ca_file(self) -> Path:
        """The CA's certificate inside the instance (readable by Postfix's daemons)."""
        return self.config_dir / "tls" / "ca.pem"

    @property
    def addresses(self) -> list[str]:
        return [listener.address for listener in self.listeners]

    @property
    def home(self) -> Path:
        """Where the instance's directory is kept while it is stopped (a symlink while running)."""
        return self.workdir / "postfix"

    def _enter_private_root(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="sigillo-postfix-", dir="/tmp"))  # not $TMPDIR
        root.chmod(0o755)
        if self.home.is_symlink():
            self.home.unlink()
        elif self.home.is_dir():  # a restart: carry queue, Maildir and log over
            _move_tree(self.home, root)
        self.home.symlink_to(root)
        self._root = root

    def _leave_private_root(self) -> None:
        if self._root is None or self._root == self.home:
            return
        self.home.unlink(missing_ok=True)
        _move_tree(self._root, self.home)
        self._root = self.home

    # -- configuration ----------------------------------------------------------------------

    def _certificates(self, listener: Listener) -> CertFiles | None:
        tls_dir = self.config_dir / "tls"
        stem = listener.address
        if listener.mode == "tls":
            return issue_server_cert(self.ca, listener.names, tls_dir, stem)
        if listener.mode == "wrongname":
            return self_signed_cert(WRONG_NAME, tls_dir, stem)
        if listener.mode == "broken":
            name = listener.names[0] if listener.names else listener.hostname
            return mismatched_cert(self.ca, name, tls_dir, stem)
        return None

    def _main_cf(self) -> str:
        nobody = pwd.getpwnam("nobody")
        if self.discard_domains:
            table = ", ".join(f"{domain}=discard:" for domain in self.discard_domains)
            transport_maps = f"inline:{{ {table} }}"
        else:
            transport_maps = ""
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "all",
            "inet_protocols": "ipv4",
            "myhostname": "peer.invalid",
            "mydomain": "peer.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery on the test peer",
            "default_transport": "error:5.4.4 the test peer does not relay",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": (
                f"check_recipient_access regexp:{self.config_dir / 'recipient_access'}"
            ),
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "append_dot_mydomain": "no",
            "notify_classes": "",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "message_size_limit": str(self.message_size_limit),
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_base": str(self.root / "mail"),
            "virtual_mailbox_maps": f"static:{_MAILDIR_NAME}/",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "relay_domains": ", ".join(self.discard_domains),
            "transport_maps": transport_maps,
            "smtpd_tls_security_level": "none",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
        }
        for key, value in self.extra_main_cf.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _master_cf(self, certificates: dict[str, CertFiles | None]) -> str:
        lines = []
        for listener in self.listeners:
            options = [
                f"myhostname={listener.hostname}",
                f"syslog_name=postfix/{listener.mode}",
            ]
            certs = certificates[listener.address]
            if certs is None:
                options.append("smtpd_tls_security_level=none")
            else:
                options += [
                    "smtpd_tls_security_level=may",
                    f"smtpd_tls_cert_file={certs.cert}",
                    f"smtpd_tls_key_file={certs.key}",
                ]
            lines.append(
                f"{listener.address}:{self.port} inet n - n - - smtpd"
                + "".join(f"\n  -o {option}" for option in options)
            )
        # The stock services, all without chroot (the instance's files are outside any jail).
        lines += [
            "pickup     unix  n - n 60    1 pickup",
            "cleanup    unix  n - n -     0 cleanup",
            "qmgr       unix  n - n 300   1 qmgr",
            "tlsmgr     unix  - - n 1000? 1 tlsmgr",
            "rewrite    unix  - - n -     - trivial-rewrite",
            "bounce     unix  - - n -     0 bounce",
            "defer      unix  - - n -     0 bounce",
            "trace      unix  - - n -     0 bounce",
            "verify     unix  - - n -     1 verify",
            "flush      unix  n - n 1000? 0 flush",
            "proxymap   unix  - - n -     - proxymap",
            "proxywrite unix  - - n -     1 proxymap",
            "smtp       unix  - - n -     - smtp",
            "relay      unix  - - n -     - smtp",
            "showq      unix  n - n -     - showq",
            "error      unix  - - n -     - error",
            "retry      unix  - - n -     - error",
            "discard    unix  - - n -     - discard",
            "local      unix  - n n -     - local",
            "virtual    unix  - n n -     - virtual",
            "lmtp       unix  - - n -     - lmtp",
            "anvil      unix  - - n -     1 anvil",
            "scache     unix  - - n -     1 scache",
            "postlog    unix-dgram n - n - 1 postlogd",
        ]
        return "\n".join(lines) + "\n"

    def _write_instance(self) -> None:
        postfix = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
        for path in (self.config_dir, self.queue_dir):
            path.mkdir(mode=0o755, exist_ok=True)
        data = self.root / "data"
        mail = self.root / "mail"
        data.mkdir(mode=0o700, exist_ok=True)
        os.chown(data, postfix.pw_uid, postfix.pw_gid)
        mail.mkdir(mode=0o755, exist_ok=True)
        for directory, _subdirs, files in os.walk(mail):  # a Maildir copied over on restart
            for entry in [directory, *(os.path.join(directory, name) for name in files)]:
                os.chown(entry, nobody.pw_uid, nobody.pw_gid)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "recipient_access").write_text(RECIPIENT_ACCESS)
        self.ca_file.parent.mkdir(mode=0o755, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        certificates = {
            listener.address: self._certificates(listener) for listener in self.listeners
        }
        (self.config_dir / "master.cf").write_text(self._master_cf(certificates))

    # -- lifecycle --------------------------------------------------------------------------

    def _postfix(self, command: str) -> tuple[int, str]:
        # postfix(1) reports fatal errors (e.g. an unregistered config directory) only to syslog,
        # or to stderr when stderr is a terminal; give it a pseudo-terminal to catch them.
        return run_with_tty(["postfix", "-c", str(self.config_dir), command], timeout=60)

    def _master_pid(self) -> int | None:
        if self._root is None:
            return None
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text().strip()
        except OSError:
            return None
        if not text.isdigit():
            return None
        pid = int(text)
        return pid if _alive(pid) else None

    def start(self, timeout: float = 30) -> None:
        """Write the instance, register it, start it and wait until every listener accepts."""
        if self._master_pid() is not None:
            raise RuntimeError("the peer is already running")
        for tool in ("postfix", "postconf"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: install the Debian package postfix")
        self._enter_private_root()
        try:
            self._write_instance()
            _register(self.config_dir)
            self._registered = True
            code, output = self._postfix("start")
            if code != 0:
                raise RuntimeError(
                    f"postfix -c {self.config_dir} start failed ({code}):\n{output}\n"
                    f"--- {self.log_path}:\n{self.log()}"
                )
            deadline = time.monotonic() + timeout
            for address in self.addresses:
                if not wait_for_tcp(address, self.port, deadline):
                    raise RuntimeError(
                        f"Postfix listener {address}:{self.port} did not accept connections "
                        f"within {timeout}s\n--- {self.log_path}:\n{self.log()}"
                    )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15) -> None:
        """Stop the instance, wait for its processes to exit and unregister its config dir.

        Safe to call more than once and after a failed `start`.
        """
        master = self._master_pid()
        if master is not None:
            processes = [master, *_children_of(master)]
            self._postfix("stop")
            deadline = time.monotonic() + timeout
            while any(_alive(pid) for pid in processes) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in processes:
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self._registered:
            _unregister(self.config_dir)
            self._registered = False
        self._leave_private_root()

    # -- inspection -------------------------------------------------------------------------

    def messages(self) -> list[ReceivedMail]:
        """Every message delivered to the Maildir so far, oldest first."""
        if self._root is None:
            return []
        files: list[Path] = []
        for sub in ("new", "cur"):
            directory = self.maildir / sub
            if directory.is_dir():
                files.extend(path for path in directory.iterdir() if path.is_file())
        files.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [parse_delivered(path.read_bytes(), self._by_hostname) for path in files]

    def wait_for(
        self,
        count: int,
        timeout: float = 30,
        *,
        match: Callable[[ReceivedMail], bool] | None = None,
    ) -> list[ReceivedMail]:
        """Wait until at least `count` messages (that satisfy `match`, if given) were delivered.

        Returns all delivered messages that satisfy `match`. The peer may be shared by many tests
        (session fixture), so give each test its own recipients and filter with `match`.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [mail for mail in self.messages() if match is None or match(mail)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"expected {count} message(s) within {timeout}s, got {len(found)}\n"
                    f"--- {self.log_path} (tail):\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def clear(self) -> None:
        """Delete every delivered message from the Maildir."""
        if self._root is None:
            return
        for sub in ("new", "cur"):
            directory = self.maildir / sub
            if directory.is_dir():
                for path in directory.iterdir():
                    path.unlink(missing_ok=True)

    def log(self) -> str:
        """The instance's maillog text ("" before anything was logged)."""
        if self._root is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def listener(self, mode: ListenerMode) -> Listener:
        """The first listener of the given mode."""
        for listener in self.listeners:
            if listener.mode == mode:
                return listener
        raise KeyError(mode)

    def __repr__(self) -> str:
        return f"PostfixPeer(port={self.port}, listeners={self.addresses}, root={self._root})"
