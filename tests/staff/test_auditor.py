"""The auditor's pages: the log newest first with filters and paging, the export as JSON
lines (itself audited), and the chain check."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from sigillo.store.models import StaffRole
from tests.staff import seed_pages as seed
from tests.staff.harness import ConsoleHarness, StaffClient


async def _auditor(console: ConsoleHarness) -> StaffClient:
    return await console.signed_in(await console.member("aud@org.example", StaffRole.AUDITOR))


async def _entries(console: ConsoleHarness) -> None:
    base = datetime.now(UTC) - timedelta(days=2)
    for i in range(60):
        await seed.audit_entry(
            console.store,
            "portal.view" if i % 2 else "portal.login",
            actor=f"p{i % 3}@patients.example",
            at=base + timedelta(minutes=i),
        )


async def test_log_is_newest_first_and_paged(console: ConsoleHarness) -> None:
    await _entries(console)
    auditor = await _auditor(console)
    page = await auditor.get("/staff/audit")
    assert page.status_code == 200
    all_entries = await console.audit()
    newest = all_entries[-1]
    assert f">{newest.seq}</th>" in page.text and newest.hash[:12] in page.text
    assert newest.hash not in page.text.replace(f'title="{newest.hash}"', "")
    seqs = [e.seq for e in all_entries]
    assert f">{seqs[-50]}</th>" in page.text and f">{seqs[-51]}</th>" not in page.text
    older = f"/staff/audit?before={seqs[-50]}"
    assert older in page.text
    second = await auditor.get(older)
    assert f">{seqs[-51]}</th>" in second.text and f">{seqs[-50]}</th>" not in second.text


async def test_filters(console: ConsoleHarness) -> None:
    await _entries(console)
    auditor = await _auditor(console)
    page = await auditor.get(
        "/staff/audit", params={"action": "portal.view", "actor": "P1@patients.example"}
    )
    expected = [e for e in await console.audit("portal.view") if e.actor == "p1@patients.example"]
    assert expected and all(f">{e.seq}</th>" in page.text for e in expected)
    assert "portal.login</code>" not in page.text
    today = datetime.now(UTC).date()
    old = await auditor.get(
        "/staff/audit", params={"until": (today - timedelta(days=3)).isoformat()}
    )
    assert "No entries match." in old.text
    bad = await auditor.get("/staff/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "not a date" in bad.text


async def test_export_json_lines_and_its_own_entry(console: ConsoleHarness) -> None:
    await _entries(console)
    auditor = await _auditor(console)
    since = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    before = await console.audit()
    response = await auditor.get("/staff/audit/export", params={"since": since})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [e["seq"] for e in lines] == [e.seq for e in before]
    assert {"seq", "prev_hash", "hash", "action", "actor", "at"} <= set(lines[0])
    # Each line links to the one before: the export can be checked on its own.
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    [entry] = await console.audit("audit.exported")
    assert entry.actor == "aud@org.example"
    assert entry.details and entry.details["to"] == "download"
    assert entry.seq not in [e["seq"] for e in lines]  # a fixed set: not its own entry
    missing = await auditor.get("/staff/audit/export", params={"since": ""})
    assert missing.status_code == 400
    assert len(await console.audit("audit.exported")) == 1


async def test_chain_status(console: ConsoleHarness) -> None:
    await _entries(console)
    auditor = await _auditor(console)
    page = await auditor.get("/staff/audit/chain")
    assert "Intact" in page.text
    victim = (await console.audit("portal.view"))[3]
    async with console.store.engine.begin() as conn:
        # A tamperer who gets past the append-only triggers.
        if conn.dialect.name == "sqlite":
            await conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        else:
            await conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        await conn.execute(
            text("UPDATE audit_events SET actor = 'someone-else' WHERE seq = :seq"),
            {"seq": victim.seq},
        )
    page = await auditor.get("/staff/audit/chain")
    assert "Broken" in page.text and f"seq {victim.seq}" in page.text
