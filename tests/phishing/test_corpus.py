"""The labelled corpus: how well the checker tells Banca Amica's own mail from everything else.

The label of a message is its folder under ``corpus/`` (see ``corpus/README.md``):
genuine-sigillo and genuine-org are the negative class, third-party and phishing the positive
one; a verdict of ``suspicious`` or ``phishing`` counts as positive. The recipient handed to
the checker is the mailbox the message was delivered to, its topmost ``Delivered-To``.

Figures for the issue (the table, precision, recall, how often ``phishing`` is said):

    .venv/bin/python -m tests.phishing.test_corpus
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dkim  # type: ignore[import-untyped, unused-ignore]
import pytest

from sigillo.phishing import Checker, CheckPolicy
from tests.phishing import make_corpus

CORPUS = Path(__file__).resolve().parent / "corpus"
FOLDERS = {
    "genuine-sigillo": False,
    "genuine-org": False,
    "third-party": True,
    "phishing": True,
}
"""Folder -> whether its messages are positives (should be flagged)."""
VERDICTS = ("genuine", "suspicious", "phishing", "errored")
FLAGGED = frozenset({"suspicious", "phishing"})
TARGET = 0.95


@dataclass(frozen=True)
class Sample:
    path: Path
    folder: str
    raw: bytes = field(repr=False)
    recipient: str | None = None

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.path.name}"


@dataclass(frozen=True)
class Outcome:
    sample: Sample
    verdict: str
    codes: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return self.verdict in FLAGGED


def policy() -> CheckPolicy:
    """Banca Amica's configuration: both of its DKIM keys known, its border MTA trusted."""
    keys = {
        signer.dns_name: signer.txt_value().encode()
        for signer in (make_corpus.sigillo_signer(), make_corpus.mail_server_signer())
    }
    return CheckPolicy(
        org_domains=(make_corpus.ORG,),
        portal_host="secure.bancamica.it",
        org_names=("Banca Amica",),
        trusted_authserv_ids=("mx.bancamica.it",),
        dkim_keys=keys,
    )


def delivered_to(raw: bytes) -> str | None:
    """The topmost Delivered-To: the mailbox whose owner would be asking."""
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            return None
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            return value.strip().decode("ascii", "replace")
    return None


def samples() -> list[Sample]:
    out = []
    for folder in FOLDERS:
        for path in sorted((CORPUS / folder).glob("*.eml")):
            raw = path.read_bytes()
            out.append(Sample(path, folder, raw, delivered_to(raw)))
    return out


def evaluate(checker: Checker, corpus: Iterable[Sample]) -> list[Outcome]:
    outcomes = []
    for sample in corpus:
        report = checker.check(sample.raw, sample.recipient)
        codes = tuple(f.code for f in report.findings)
        outcomes.append(Outcome(sample, report.verdict, codes))
    return outcomes


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    table: dict[str, Counter[str]]
    """folder -> verdict -> count"""

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> Scores:
        tp = sum(1 for o in outcomes if o.flagged and FOLDERS[o.sample.folder])
        fp = sum(1 for o in outcomes if o.flagged and not FOLDERS[o.sample.folder])
        fn = sum(1 for o in outcomes if not o.flagged and FOLDERS[o.sample.folder])
        table: dict[str, Counter[str]] = {folder: Counter() for folder in FOLDERS}
        for o in outcomes:
            table[o.sample.folder][o.verdict] += 1
        return cls(
            precision=tp / (tp + fp) if tp + fp else 0.0,
            recall=tp / (tp + fn) if tp + fn else 0.0,
            table=table,
        )

    def share(self, folder: str, verdict: str) -> float:
        row = self.table[folder]
        return row[verdict] / sum(row.values()) if row else 0.0


def expected(folder: str) -> str:
    return "suspicious|phishing" if FOLDERS[folder] else "genuine"


def confusion(outcomes: Iterable[Outcome]) -> str:
    """One line per message the checker got wrong: file, expected, got, finding codes."""
    return "\n".join(
        f"  {o.sample.name}: expected {expected(o.sample.folder)}, got {o.verdict} "
        f"[{', '.join(o.codes) or 'no findings'}]"
        for o in outcomes
    )


def render(outcomes: list[Outcome]) -> str:
    scores = Scores.of(outcomes)
    lines = [f"{'folder':<16}" + "".join(f"{v:>12}" for v in VERDICTS) + f"{'total':>8}"]
    for folder, row in scores.table.items():
        cells = "".join(f"{row[v]:>12}" for v in VERDICTS)
        lines.append(f"{folder:<16}{cells}{sum(row.values()):>8}")
    lines += [
        "",
        f"messages:  {len(outcomes)}",
        f"precision: {scores.precision:.3f}  (flagged and really not ours / all flagged)",
        f"recall:    {scores.recall:.3f}  (flagged / all not ours)",
        f"phishing/ judged phishing:    {scores.share('phishing', 'phishing'):.1%}",
        f"third-party/ judged phishing: {scores.share('third-party', 'phishing'):.1%}"
        "  (false alarms: ordinary mail called an imitation)",
    ]
    wrong = [o for o in outcomes if o.flagged != FOLDERS[o.sample.folder]]
    if wrong:
        lines += ["", "misjudged:", confusion(wrong)]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return evaluate(Checker(policy()), samples())


def test_corpus_is_large_enough_and_every_label_is_used() -> None:
    corpus = samples()
    assert len(corpus) >= 60
    assert set(FOLDERS) == {s.folder for s in corpus}
    assert all(len(s.raw) < 20_000 for s in corpus)


def test_generated_messages_are_what_make_corpus_writes() -> None:
    """sigillo's own mail in the corpus is what sigillo renders today; rerun the script when
    a template changes, so the corpus never tests yesterday's notification."""
    stale = [
        str(path.relative_to(CORPUS))
        for path, data in make_corpus.build().items()
        if not path.exists() or path.read_bytes() != data
    ]
    assert not stale, f"run tests/phishing/make_corpus.py; out of date: {stale}"


def _keys(name: bytes, timeout: int = 5) -> bytes | None:
    return policy().dkim_keys.get(name.decode().rstrip(".").lower())


@pytest.mark.parametrize(
    "sample",
    [s for s in samples() if s.folder.startswith("genuine-") or "tampered" in s.path.name],
    ids=lambda s: s.name,
)
def test_signatures_in_the_corpus_are_what_their_label_says(sample: Sample) -> None:
    """Independent of the checker: the genuine messages that carry a Banca Amica signature
    verify with dkimpy against the corpus keys (LF copies once line endings are restored),
    and the tampered ones do not."""
    raw = sample.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if b"\r\nDKIM-Signature:" not in b"\r\n" + raw.split(b"\r\n\r\n", 1)[0]:
        assert sample.path.name.startswith("internal-"), "only internal mail goes unsigned"
        return
    verified = dkim.verify(raw, dnsfunc=_keys)
    assert verified is (sample.folder != "phishing")


def test_no_check_errors(outcomes: list[Outcome]) -> None:
    errored = [o for o in outcomes if o.verdict == "errored"]
    assert not errored, "checks errored:\n" + confusion(errored)


def test_no_phishing_is_ever_called_genuine(outcomes: list[Outcome]) -> None:
    missed = [o for o in outcomes if o.sample.folder == "phishing" and o.verdict == "genuine"]
    assert not missed, "phishing judged genuine:\n" + confusion(missed)


def test_sigillos_own_mail_is_always_genuine(outcomes: list[Outcome]) -> None:
    doubted = [
        o for o in outcomes if o.sample.folder == "genuine-sigillo" and o.verdict != "genuine"
    ]
    assert not doubted, "sigillo's own mail not judged genuine:\n" + confusion(doubted)


def test_precision_and_recall(outcomes: list[Outcome]) -> None:
    scores = Scores.of(outcomes)
    assert scores.precision >= TARGET and scores.recall >= TARGET, render(outcomes)


def main() -> int:
    print(render(evaluate(Checker(policy()), samples())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
