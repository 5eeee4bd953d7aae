"""The console's page modules, in navigation order: each exports ``routes(console)`` and may
export ``NAV`` (see ``sigillo.staff.pages.base``). The landing page ``/staff/`` opens the
first navigation entry the member's roles allow, so the dashboard comes first."""

from __future__ import annotations

from types import ModuleType

from sigillo.staff.pages import admin, agent, auditor, auth, dashboard, operator, reports

PAGES: list[ModuleType] = [auth, dashboard, operator, reports, auditor, agent, admin]
