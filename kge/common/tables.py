"""The one writer of what reports print: Markdown tables, durations, a report's Markdown + JSON pair.

Every report (ensemble summary, evaluation summary, timing, studies, sweeps, quantization, status,
the submission's leaderboard text) builds its tables and durations here, so they look alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from kge.common import atomic


def markdown_row(cells: Sequence[object]) -> str:
    """One table line: ``| a | b |``; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {cell} " if str(cell) != "" else " " for cell in cells) + "|"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A GitHub Markdown table as lines: the header, the ``|---|`` rule, one line per row (cells
    already formatted; anything else goes through str)."""
    rows = list(rows)
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"table row has {len(row)} cells for {len(columns)} columns: {row}")
    return [markdown_row(columns), "|" + "---|" * len(columns)] + [markdown_row(row) for row in rows]


def text_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    align: str,
    widths: Sequence[int] | None = None,
    sep: str = " ",
) -> list[str]:
    """A fixed-width table for a terminal, as lines (trailing spaces stripped): ``align`` has one
    character per column, ``<`` left or ``>`` right; each column is as wide as its widest cell, at
    least ``widths[i]``; ``sep`` between columns."""
    rows = [[str(cell) for cell in row] for row in rows]
    if len(align) != len(columns) or any(len(row) != len(columns) for row in rows):
        raise ValueError(
            f"text table: {len(columns)} columns, align {align!r}, rows of {sorted({len(r) for r in rows})} cells"
        )
    width = [
        max([len(str(c)), *(len(row[i]) for row in rows), (widths or [0] * len(columns))[i]])
        for i, c in enumerate(columns)
    ]
    line = lambda cells: sep.join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, width)).rstrip()  # noqa: E731
    return [line([str(c) for c in columns])] + [line(row) for row in rows]


def format_duration(seconds: float | None, compact: bool = False) -> str:
    """Seconds as a person reads them: ``"3 min 05 s"`` / ``"2 h 07 min"``; ``compact`` for narrow
    columns: ``"3m05s"`` / ``"2h07m"``. None (unknown) is ``"-"``."""
    if seconds is None:
        return "-"
    total = int(round(seconds)) if not compact else int(seconds)
    hours, rest = divmod(total, 3600)
    if compact:
        return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def write_report(markdown_path: str | Path, json_path: str | Path | None, markdown: str, data) -> None:
    """A report's two outputs, each atomic: the Markdown text and (if a path is given) its data as JSON."""
    if json_path is not None:
        atomic.save_json(json_path, data)
    atomic.save_text(markdown_path, markdown)
