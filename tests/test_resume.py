"""`kge resume`: unlock only when no snakemake/kge process works in the directory, then rerun."""

import subprocess
import sys
import time

import pytest

from kge.common.errors import KgeInputError
from kge.report.resume import live_workers, resume

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _start(name, cwd):
    # A process whose command line starts with `name`, like an orphaned `kge train` after a SIGKILL.
    proc = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 60"], cwd=cwd)
    for _ in range(100):
        if live_workers(cwd):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the stand-in process never appeared in /proc")


def _fake_snakemake(tmp_path):
    script = tmp_path / "fake-snakemake"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {tmp_path / 'calls.txt'}\n"
        'case "$1" in --unlock) rm -rf .snakemake/locks/* ;; esac\n'
    )
    script.chmod(0o755)
    return str(script)


def test_refuses_while_a_job_is_alive_then_unlocks_and_reruns(tmp_path):
    work = tmp_path / "run"
    (work / ".snakemake" / "locks").mkdir(parents=True)
    (work / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    (work / "sub").mkdir()
    fake = _fake_snakemake(tmp_path)
    orphan = _start("kge", work / "sub")  # a job below the workflow directory counts too
    try:
        assert [cmd.split()[0] for _pid, cmd in live_workers(work)] == ["kge"]
        with pytest.raises(KgeInputError, match="still run"):
            resume(["--configfile", "x.yaml"], workdir=work, snakemake=fake)
        assert not (tmp_path / "calls.txt").exists()  # nothing unlocked
    finally:
        orphan.kill()
        orphan.wait()
    assert live_workers(work) == []
    assert resume(["--configfile", "x.yaml"], workdir=work, snakemake=fake) == 0
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["--unlock --configfile x.yaml", "--configfile x.yaml"]
    assert not any((work / ".snakemake" / "locks").iterdir())


def test_other_directories_and_programs_are_ignored(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    other_dir = _start("snakemake", tmp_path / "b")
    other_prog = subprocess.Popen(["bash", "-c", "exec -a editor sleep 60"], cwd=tmp_path / "a")
    try:
        time.sleep(0.2)
        assert live_workers(tmp_path / "a") == []
        assert len(live_workers(tmp_path / "b")) == 1
    finally:
        for proc in (other_dir, other_prog):
            proc.kill()
            proc.wait()


def test_no_lock_no_unlock(tmp_path):
    fake = _fake_snakemake(tmp_path)
    assert resume(["-n"], workdir=tmp_path, snakemake=fake) == 0
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["-n"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/usr/bin/python3.11", "-u", "-m", "kge", "predict"], True),  # a torchrun worker
        (["python", "-m", "torch.distributed.run", "--standalone"], True),
        (["python3", "/venv/bin/snakemake", "all"], True),
        (["/venv/bin/python3.11", "/venv/bin/kge", "train"], True),
        (["/venv/bin/kge", "train"], True),
        (["torchrun", "--nproc-per-node=2"], True),
        (["python", "-m", "pytest", "-q"], False),
        (["python", "-c", "print('kge')"], False),
        (["bash", "-c", "kge train"], False),  # its kge child is what counts
        (["vim", "kge/train/trainer.py"], False),
    ],
)
def test_which_command_lines_are_workflow_processes(argv, expected):
    from kge.report.resume import _is_workflow_process

    assert _is_workflow_process(argv) is expected


@pytest.mark.parametrize(
    "argv, directory, passed",
    [
        (["resume", "--configfile", "a.yaml", "b.yaml", "all"], ".", ["--configfile", "a.yaml", "b.yaml", "all"]),
        (["resume", "--directory", "/w", "-n", "--cores", "2"], "/w", ["-n", "--cores", "2"]),
        (["resume"], ".", []),
    ],
)
def test_cli_passes_every_argument_to_snakemake(monkeypatch, argv, directory, passed):
    import kge.report.resume
    from kge.cli import main

    calls = []
    monkeypatch.setattr(kge.report.resume, "resume", lambda args, workdir: calls.append((args, workdir)) or 0)
    assert main(argv) == 0
    assert calls == [(passed, directory)]
