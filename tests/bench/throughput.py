"""End-to-end relay throughput: sigillo against a stock Postfix relay, through the same TLS sink.

What is measured
    Postfix's ``smtp-source`` pushes N messages of a given size, over S parallel sessions, into a
    relay: either sigillo (``sigillo serve --role smtp,worker`` as a subprocess, on its defaults
    plus the addresses below) or a stock Postfix instance. Both relay every message to the same
    Postfix *sink*, which offers STARTTLS with a certificate for ``mx.sink.test`` from a test CA
    and discards mail for ``sink.test``. A run's clock starts when smtp-source starts and stops
    when the sink has discarded all N messages of that run (counted from the sink's maillog:
    ``postfix/discard ... to=<RUN-RECIPIENT>, relay=none, ... status=sent``). The time at which
    smtp-source finished is reported too, as the *acceptance* time.

Why end to end
    Acceptance alone rewards a relay that answers 250 and lets the queue grow. Both relays
    here promise durability before 250 and deliver over verified TLS, so the number that
    matters to the organisation is how fast mail *leaves*: messages per second until the last
    copy has reached the recipient's server.

The two relays
    sigillo: default delivery policy ``verify``; it finds the sink through dnsmasq
        (``sink.test MX 10 mx.sink.test``, ``mx.sink.test A <sink>``) and checks the sink's
        certificate against the test CA and the MX name.
    Postfix: `tests.peers.relay.PostfixRelay`, Postfix's default performance settings, a
        ``transport_maps`` entry ``sink.test smtp:[<sink>]:<port>`` (no DNS) and
        ``smtp_tls_security_level = verify`` with the test CA and the literal match name
        ``mx.sink.test`` (``smtp_tls_verify_cert_match``), i.e. the same check as sigillo's.

Targets alternate (sigillo, postfix, sigillo, postfix ...) for ``--rounds`` rounds; each run
sends to its own recipient (``rN-TARGET@sink.test``) so the sink's log tells the runs apart.
After the runs the script records sigillo's peak RSS (VmHWM of the process and any children),
and checks that every sigillo job is ``delivered`` over verified TLS (``sigillo queue --json
--all``) and that every session that brought mail into the sink used STARTTLS.

Run as root from the repository root (Postfix needs root; nothing is left behind):

    .venv/bin/python tests/bench/throughput.py --messages 2000 --size 4096 --sessions 10 --rounds 2

This is a measurement, not a test: it asserts nothing about time. Other work on the machine
skews it (relays, sink and load generator share the CPUs), so the load average before the start
and at the end of each run is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests.peers` importable
    sys.path.insert(0, str(REPO))

from tests.peers.ca import make_ca  # noqa: E402
from tests.peers.dnsmasq import DnsmasqPeer  # noqa: E402
from tests.peers.net import free_loopback_block, free_port, wait_for_tcp  # noqa: E402
from tests.peers.postfix import Listener, PostfixPeer  # noqa: E402
from tests.peers.relay import PostfixRelay  # noqa: E402

SINK_DOMAIN = "sink.test"
SINK_MX = "mx.sink.test"
SENDER = "sender@org.example"
TARGETS = ("sigillo", "postfix")

# Lines of the sink's maillog that matter here.
_DISCARDED = re.compile(r"postfix/discard\[\d+\]: \w+: to=<([^>]+)>, relay=none, .*\bstatus=sent\b")
_SESSION_END = re.compile(r"smtpd\[\d+\]: disconnect from \S*\[([0-9.]+)\] (.*)$")


# -- measuring -------------------------------------------------------------------------------


class SinkLog:
    """Follows the sink's maillog incrementally and counts discarded copies per recipient."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.discarded: Counter[str] = Counter()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next poll
        for raw in lines:
            match = _DISCARDED.search(raw.decode(errors="replace"))
            if match:
                self.discarded[match.group(1).lower()] += 1


@dataclass
class Run:
    target: str
    round: int
    recipient: str
    messages: int
    accept_s: float = 0.0
    """From the start of smtp-source until it exited (every message answered 250)."""
    e2e_s: float = 0.0
    """From the start of smtp-source until the sink had discarded all messages of this run."""
    delivered: int = 0
    complete: bool = False
    load1: float = 0.0
    """The 1-minute load average when the run ended (the benchmark's own processes included)."""

    @property
    def rate(self) -> float:
        return self.delivered / self.e2e_s if self.e2e_s > 0 else 0.0


def push(
    run: Run, host: str, port: int, args: argparse.Namespace, sink: SinkLog, workdir: Path
) -> Run:
    """Run smtp-source against `host:port` and wait until the sink has every message."""
    argv = [
        "smtp-source",
        "-s",
        str(args.sessions),
        "-m",
        str(run.messages),
        "-l",
        str(args.size),
        "-f",
        SENDER,
        "-t",
        run.recipient,
        f"{host}:{port}",
    ]
    sink.poll()
    before = sink.discarded[run.recipient]
    out_path = workdir / f"smtp-source-{run.target}-{run.round}.out"
    with out_path.open("wb") as out:
        start = time.monotonic()
        source = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = start + args.timeout
        accepted_at: float | None = None
        while True:
            now = time.monotonic()
            if accepted_at is None and source.poll() is not None:
                accepted_at = now
                if source.returncode != 0:
                    raise RuntimeError(
                        f"smtp-source against {run.target} failed ({source.returncode}):\n"
                        + out_path.read_text(errors="replace")[-2000:]
                    )
            sink.poll()
            run.delivered = sink.discarded[run.recipient] - before
            if run.delivered >= run.messages and run.e2e_s == 0.0:
                run.e2e_s = now - start
            if accepted_at is not None and run.e2e_s > 0.0:
                run.complete = True
                break
            if now > deadline:
                source.kill()
                source.wait()
                run.e2e_s = now - start
                print(
                    f"  ! {run.target} round {run.round}: only {run.delivered}/{run.messages} "
                    f"at the sink after {args.timeout:.0f}s",
                    file=sys.stderr,
                )
                break
            time.sleep(0.02)
    run.accept_s = (accepted_at or time.monotonic()) - start
    run.load1 = os.getloadavg()[0]
    return run


def peak_rss_kib(pid: int) -> int:
    """VmHWM of `pid` plus that of each of its living descendants, in KiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


# -- checking --------------------------------------------------------------------------------


def sigillo_queue(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Counts by state and the TLS facts of every attempt, from ``sigillo queue --json --all``."""
    proc = subprocess.run(
        [sys.executable, "-m", "sigillo", "queue", "--json", "--all"],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=300,
    )
    data = json.loads(proc.stdout)
    attempts = [a for job in data["jobs"] for a in job["history"]]
    return {
        "counts": data["counts"],
        "attempts": len(attempts),
        "attempt_outcomes": dict(Counter(a["outcome"] for a in attempts)),
        "tls_versions": dict(Counter(str(a["tls_version"]) for a in attempts)),
        "cert_verified": dict(Counter(str(a["cert_verified"]) for a in attempts)),
        "verification": dict(Counter(str(a["verification"]) for a in attempts)),
    }


def sink_sessions(log: str, clients: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per client (name -> IP): sessions at the sink that sent DATA, and how many used STARTTLS."""
    by_ip = {ip: name for name, ip in clients.items()}
    result = {name: {"sessions_with_data": 0, "with_starttls": 0} for name in clients}
    for line in log.splitlines():
        match = _SESSION_END.search(line)
        if match is None or match.group(1) not in by_ip:
            continue
        commands = match.group(2)
        if not re.search(r"\bdata=[1-9]", commands):
            continue
        counts = result[by_ip[match.group(1)]]
        counts["sessions_with_data"] += 1
        if re.search(r"\bstarttls=1\b", commands):
            counts["with_starttls"] += 1
    return result


# -- orchestration ---------------------------------------------------------------------------


@dataclass
class Report:
    args: dict[str, Any]
    load_before: float
    runs: list[Run] = field(default_factory=list)
    sigillo_peak_rss_mib: float = 0.0
    sigillo_queue: dict[str, Any] = field(default_factory=dict)
    sink_sessions: dict[str, dict[str, int]] = field(default_factory=dict)
    postfix_verified_tls: int = 0

    def median_rate(self, target: str) -> float:
        rates = [run.rate for run in self.runs if run.target == target]
        return statistics.median(rates) if rates else 0.0

    def as_json(self) -> dict[str, Any]:
        sigillo, postfix = self.median_rate("sigillo"), self.median_rate("postfix")
        return {
            "args": self.args,
            "load_before": self.load_before,
            "runs": [{**asdict(run), "rate": round(run.rate, 2)} for run in self.runs],
            "median_rate": {"sigillo": round(sigillo, 2), "postfix": round(postfix, 2)},
            "ratio_sigillo_postfix": round(sigillo / postfix, 3) if postfix else None,
            "sigillo_peak_rss_mib": round(self.sigillo_peak_rss_mib, 1),
            "sigillo_queue": self.sigillo_queue,
            "sink_sessions": self.sink_sessions,
            "postfix_verified_tls_connections": self.postfix_verified_tls,
            "problems": self.problems(),
        }

    def problems(self) -> list[str]:
        """What contradicts "every message reached the sink over verified TLS"."""
        found = [
            f"{run.target} round {run.round}: {run.delivered}/{run.messages} at the sink"
            for run in self.runs
            if not run.complete
        ]
        counts = self.sigillo_queue.get("counts", {})
        states = {state for kind in counts.values() for state in kind}
        if states != {"delivered"}:
            found.append(f"sigillo jobs not all delivered: {json.dumps(counts)}")
        if set(self.sigillo_queue.get("cert_verified", {})) != {"True"}:
            found.append("sigillo attempts without a verified certificate")
        for name, sessions in self.sink_sessions.items():
            if sessions["with_starttls"] != sessions["sessions_with_data"]:
                found.append(f"sink sessions from {name} without STARTTLS")
        sent = sum(run.messages for run in self.runs if run.target == "postfix")
        if self.postfix_verified_tls < self.sink_sessions.get("postfix", {}).get(
            "sessions_with_data", sent
        ):
            found.append("postfix relay connections without a verified certificate")
        return found

    def print(self) -> None:
        print()
        print(
            f"{'target':<8} {'round':>5} {'messages':>8} {'accept s':>9} {'e2e s':>8} "
            f"{'msg/s':>8} {'load1':>6}"
        )
        for run in self.runs:
            flag = "" if run.complete else f"  INCOMPLETE ({run.delivered} delivered)"
            print(
                f"{run.target:<8} {run.round:>5} {run.messages:>8} {run.accept_s:>9.2f} "
                f"{run.e2e_s:>8.2f} {run.rate:>8.1f} {run.load1:>6.2f}{flag}"
            )
        sigillo, postfix = self.median_rate("sigillo"), self.median_rate("postfix")
        print()
        print(f"median end-to-end msg/s: sigillo {sigillo:.1f}, postfix {postfix:.1f}")
        ratio = f"{sigillo / postfix:.3f}" if postfix else "n/a"
        print(f"ratio sigillo/postfix:   {ratio}")
        print(
            f"sigillo peak RSS:        {self.sigillo_peak_rss_mib:.1f} MiB (VmHWM, with children)"
        )
        print()
        queue = self.sigillo_queue
        print(f"sigillo jobs by state:   {json.dumps(queue.get('counts'))}")
        print(
            f"sigillo attempts:        {queue.get('attempts')} "
            f"outcomes={json.dumps(queue.get('attempt_outcomes'))} "
            f"tls={json.dumps(queue.get('tls_versions'))} "
            f"cert_verified={json.dumps(queue.get('cert_verified'))} "
            f"verification={json.dumps(queue.get('verification'))}"
        )
        for name, counts in self.sink_sessions.items():
            print(
                f"sink sessions from {name:<8} {counts['sessions_with_data']} with mail, "
                f"{counts['with_starttls']} of them over STARTTLS"
            )
        print(f"postfix relay 'Verified TLS connection established': {self.postfix_verified_tls}")
        problems = self.problems()
        print("checks: " + ("OK" if not problems else "FAILED\n  " + "\n  ".join(problems)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--size", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--rounds", type=int, default=1, help="runs per target, alternating")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--timeout", type=float, default=900, help="give up on a run after this many seconds"
    )
    parser.add_argument(
        "--split-roles",
        action="store_true",
        help="run sigillo's listener and worker as two processes",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: Postfix instances need it", file=sys.stderr)
        return 2
    for tool in ("smtp-source", "postfix", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (Debian packages postfix, dnsmasq)", file=sys.stderr)
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="sigillo-bench-"))
    block = free_loopback_block()
    sink_ip, relay_ip = f"{block}.2", f"{block}.3"
    ca = make_ca(workdir / "ca")
    sink = PostfixPeer(
        workdir / "sink",
        free_port(sink_ip),
        [Listener(sink_ip, "tls", (SINK_MX,))],
        ca.ca,
        domains=[],
        discard_domains=[SINK_DOMAIN],
    )
    relay = PostfixRelay(
        workdir / "relay",
        relay_ip,
        free_port(relay_ip),
        ca.ca,
        routes={SINK_DOMAIN: (sink_ip, sink.port)},
        tls_level="verify",
        verify_match=SINK_MX,
    )
    # Real MX records carry TTLs of minutes to hours; dnsmasq's local records default to 0.
    dns = DnsmasqPeer(
        workdir / "dns",
        mx={SINK_DOMAIN: [(10, SINK_MX)]},
        hosts={SINK_MX: sink_ip},
        extra_lines=["local-ttl=300"],
    )
    sigillo: subprocess.Popen[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = []
    report = Report(
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        load_before=os.getloadavg()[0],
    )
    try:
        sink.start()
        relay.start()
        dns.start()
        sigillo_port = free_port("127.0.0.1")
        env = {
            **os.environ,
            "SIGILLO_SMTP__LISTEN": f"127.0.0.1:{sigillo_port}",
            "SIGILLO_DNS__NAMESERVERS": json.dumps([dns.nameserver]),
            "SIGILLO_DELIVERY__MX_PORT": str(sink.port),
            "SIGILLO_DELIVERY__CA_FILE": str(ca.pem_path),
            "SIGILLO_STORAGE__DATABASE_URL": f"sqlite:///{workdir}/sigillo.db",
            "SIGILLO_STORAGE__KEY_FILE": str(workdir / "keys"),
        }
        # One process with both roles, or (--split-roles) the listener and the worker as two
        # processes sharing the store, the scale-out the design allows; then the worker finds
        # new mail by polling, every 200 ms.
        role_sets = ["smtp", "worker"] if args.split_roles else ["smtp,worker"]
        if args.split_roles:
            env["SIGILLO_DELIVERY__POLL_INTERVAL"] = "200ms"
        with (workdir / "sigillo.log").open("ab") as log:
            for roles in role_sets:
                extra.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "sigillo", "serve", "--role", roles],
                        env=env,
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                )
        sigillo = extra[0]
        if not wait_for_tcp("127.0.0.1", sigillo_port, time.monotonic() + 60):
            tail = (workdir / "sigillo.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"sigillo did not listen on 127.0.0.1:{sigillo_port}\n{tail}")
        print(
            f"sink {sink_ip}:{sink.port} (verified TLS, discards {SINK_DOMAIN}); "
            f"postfix relay {relay_ip}:{relay.port}; sigillo 127.0.0.1:{sigillo_port} "
            f"(pid {sigillo.pid}); dnsmasq {dns.nameserver}; workdir {workdir}",
            flush=True,
        )
        print(
            f"{args.rounds} round(s) of {args.messages} x {args.size} bytes, "
            f"{args.sessions} sessions; load average before start {report.load_before:.2f}",
            flush=True,
        )

        sink_log = SinkLog(sink.log_path)
        addresses = {"sigillo": ("127.0.0.1", sigillo_port), "postfix": (relay_ip, relay.port)}
        for number in range(1, args.rounds + 1):
            for target in TARGETS:
                run = Run(target, number, f"r{number}-{target}@{SINK_DOMAIN}", args.messages)
                host, port = addresses[target]
                push(run, host, port, args, sink_log, workdir)
                report.runs.append(run)
                print(
                    f"  {target:<8} round {number}: accepted in {run.accept_s:.2f}s, "
                    f"at the sink in {run.e2e_s:.2f}s ({run.rate:.1f} msg/s)",
                    flush=True,
                )

        report.sigillo_peak_rss_mib = sum(peak_rss_kib(p.pid) for p in extra) / 1024
        report.sigillo_queue = sigillo_queue(env, workdir)
        report.sink_sessions = sink_sessions(
            sink.log(), {"sigillo": "127.0.0.1", "postfix": relay_ip}
        )
        report.postfix_verified_tls = relay.log().count("Verified TLS connection established")
        report.print()
        if args.json:
            args.json.write_text(json.dumps(report.as_json(), indent=2) + "\n")
            print(f"\nJSON written to {args.json}")
    finally:
        for process in extra:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        relay.stop()
        sink.stop()
        dns.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
