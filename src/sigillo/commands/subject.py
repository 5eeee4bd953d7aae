"""``sigillo subject``: data subject rights: export and erasure of one address's data."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True, help="Data subject rights: export and erasure of one address's data."
)
