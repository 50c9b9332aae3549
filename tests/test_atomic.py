"""Atomic writes: the finished file appears complete or not at all, with the mode a plain open() gives."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from kge.common import atomic


def test_finished_files_get_the_mode_a_plain_open_gives(tmp_path):
    """Not mkstemp's owner-only 0600: results on a shared machine stay readable as the umask says."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == atomic.FILE_MODE
    atomic.save_json(tmp_path / "a.json", {"a": 1})
    atomic.save_text(tmp_path / "a.md", "x")
    atomic.save_npz(tmp_path / "a.npz", x=np.zeros(2))
    atomic.torch_save(tmp_path / "a.pt", {"a": 1})
    for name in ("a.json", "a.md", "a.npz", "a.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_an_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
