"""The one table writer and duration formatter every report uses (kge.common.tables)."""

from __future__ import annotations

import json

import pytest

from kge.common.tables import format_duration, markdown_table, text_table, write_report


def test_markdown_table_lines():
    assert markdown_table(["a", "b c"], [[1, "x"], ["", 2.5]]) == ["| a | b c |", "|---|---|", "| 1 | x |", "| | 2.5 |"]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2]])


@pytest.mark.parametrize(
    ("seconds", "long", "compact"),
    [
        (0, "0 min 00 s", "0m00s"),
        (65.4, "1 min 05 s", "1m05s"),
        (59.6, "1 min 00 s", "0m59s"),
        (3600, "1 h 00 min", "1h00m"),
        (7325, "2 h 02 min", "2h02m"),
        (None, "-", "-"),
    ],
)
def test_format_duration(seconds, long, compact):
    assert format_duration(seconds) == long
    assert format_duration(seconds, compact=True) == compact


def test_write_report_writes_both(tmp_path):
    write_report(tmp_path / "t.md", tmp_path / "t.json", "| a |\n", {"rows": [1]})
    assert (tmp_path / "t.md").read_text() == "| a |\n"
    assert json.loads((tmp_path / "t.json").read_text()) == {"rows": [1]}
    assert not list(tmp_path.glob("*.tmp*"))


def test_text_table_aligns_and_widens():
    lines = text_table(
        ["rank", "label", "score"], [[1, "alice", "0.5"], [10, "bob", "12.25"]], "><>", widths=[4, 0, 6], sep="  "
    )
    assert lines == ["rank  label   score", "   1  alice     0.5", "  10  bob     12.25"]
    # A cell wider than the minimum widens its column; trailing spaces are stripped.
    assert text_table(["a", "b"], [["long cell", ""]], "<<") == ["a         b", "long cell"]
    with pytest.raises(ValueError, match="2 columns"):
        text_table(["a", "b"], [["x"]], "<<")
