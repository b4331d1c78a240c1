"""How wide commands print: a terminal's own width; for pipes and logs the width COLUMNS
gives, else 120 rather than rich's guess of 80, so a table is not squeezed for a file."""

from __future__ import annotations

import os

from rich.console import Console

__all__ = ["PIPE_WIDTH", "fit_pipes"]

PIPE_WIDTH = 120


def fit_pipes(console: Console) -> Console:
    """``console``, widened to PIPE_WIDTH when it writes to no terminal and COLUMNS is not
    set (an explicit COLUMNS is the width asked for, and is kept)."""
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = max(console.width, PIPE_WIDTH)
    return console
