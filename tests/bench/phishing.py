"""Phishing checker throughput: messages checked per second, offline, on one core.

What is measured
    Every message of the labelled corpus (tests/phishing/corpus, about 90 messages: sigillo's
    notifications and DSNs, the bank's own mail, third-party mail, phishing) is checked in
    turn, round after round, in this one process pinned to one CPU, for ``--seconds``. Offline:
    Banca Amica's two DKIM keys are known locally and no DNS is asked, as in the corpus test.
    A first round is run apart, so imports, regex compilation and tldextract's suffix list
    are not counted; its time is printed. The rounds after it repeat the same hosts, so the
    checker's per-host caches (look-alike comparisons, registrable domains) are warm, as they
    mostly are for a server checking mail from the same few senders all day.

Printed: messages per second over the whole run, and per folder the median and the slowest
time of one check. ``--evaluate`` prints the corpus table (folder x verdict, precision,
recall) instead, as ``python -m tests.phishing.test_corpus`` does.

    .venv/bin/python tests/bench/phishing.py --seconds 10

This is a measurement, not a test: it asserts nothing about time. Other work on the machine
skews it; the load average at the start and the end is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sigillo.phishing import Checker  # noqa: E402
from tests.phishing.test_corpus import FOLDERS, evaluate, policy, render, samples  # noqa: E402


def pin(cpu: int | None) -> int:
    """Run on one CPU: the figure is per core, whatever the machine has."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def bench(seconds: float) -> None:
    checker = Checker(policy())
    corpus = samples()
    before = time.perf_counter()
    for sample in corpus:
        checker.check(sample.raw, sample.recipient)
    first = time.perf_counter() - before
    print(f"  first round, untimed below: {len(corpus)} messages in {first * 1000:.0f} ms")
    times: dict[str, list[float]] = {folder: [] for folder in FOLDERS}
    checked = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for sample in corpus:
            before = time.perf_counter()
            checker.check(sample.raw, sample.recipient)
            times[sample.folder].append(time.perf_counter() - before)
        checked += len(corpus)
    elapsed = time.perf_counter() - started
    print(f"  {checked} checks of {len(corpus)} messages in {elapsed:.2f} s")
    print(f"  {checked / elapsed:.0f} messages/s on one core")
    print(f"  {'folder':<16}{'median ms':>10}{'max ms':>10}")
    for folder, spent in times.items():
        print(f"  {folder:<16}{statistics.median(spent) * 1000:>10.2f}{max(spent) * 1000:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to check")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--evaluate", action="store_true", help="print the corpus figures")
    args = parser.parse_args()
    if args.evaluate:
        print(render(evaluate(Checker(policy()), samples())))
        return
    cpu = pin(args.cpu)
    print(f"phishing checker, pinned to CPU {cpu}, load average {os.getloadavg()[0]:.2f}")
    bench(args.seconds)
    print(f"  load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
