"""Resume an interrupted Snakemake run in one command: ``kge resume [snakemake arguments]``.

A run killed hard (SIGKILL, a lost SSH session, an out-of-memory kill) leaves Snakemake's lock in
``.snakemake/locks``, and the plain rerun stops with "Directory cannot be locked" until
``snakemake --unlock``. Unlocking is only safe when nothing is still working in the directory: a
second Snakemake, or a job orphaned by the kill (a ``kge train`` whose Snakemake parent died keeps
writing its checkpoint). So ``kge resume`` first looks for live processes whose working directory is
the workflow directory and whose command line runs ``snakemake`` or ``kge``; only if there are none
does it unlock and start ``snakemake`` with the same arguments. The profile's ``rerun-incomplete``
reruns the jobs that were cut off; training resumes from each model's last complete checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kge.common.errors import KgeInputError

PROC = Path("/proc")


def _command_line(pid_dir: Path) -> list[str]:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def live_workers(
    workdir: str | os.PathLike, proc: Path = PROC, own_pids: set[int] | None = None
) -> list[tuple[int, str]]:
    """(pid, command line) of live ``snakemake`` or ``kge`` processes whose cwd is ``workdir`` or below it.

    ``own_pids``: processes to ignore (this one and its parents). Linux only (reads /proc).
    """
    if not proc.is_dir():
        raise KgeInputError(
            "kge resume: cannot list processes (no /proc on this system); check that no snakemake or kge job "
            "still runs in this directory, then run `snakemake --unlock` and `snakemake`"
        )
    root = Path(workdir).resolve()
    skip = own_pids if own_pids is not None else _own_pids()
    found = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) in skip:
            continue
        try:
            cwd = Path(os.readlink(pid_dir / "cwd")).resolve()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if cwd != root and root not in cwd.parents:
            continue
        argv = _command_line(pid_dir)
        if _is_workflow_process(argv):
            found.append((int(pid_dir.name), " ".join(argv)))
    return sorted(found)


WORKFLOW_PROGRAMS = {"snakemake", "kge", "torchrun"}
WORKFLOW_MODULES = {"snakemake", "kge", "torch.distributed.run", "torch.distributed.launch"}


def _is_workflow_process(argv: list[str]) -> bool:
    """``snakemake ...``, ``kge ...``, ``torchrun ...``, ``python [-u ...] /path/bin/kge ...`` or
    ``python [-u ...] -m kge ...`` (how torchrun starts its workers)."""
    if not argv:
        return False
    if Path(argv[0]).name in WORKFLOW_PROGRAMS:
        return True
    if not Path(argv[0]).name.startswith("python"):
        return False
    rest = argv[1:]
    while rest and rest[0].startswith("-"):  # interpreter options up to the script or -m MODULE
        if rest[0] == "-m":
            return len(rest) > 1 and rest[1] in WORKFLOW_MODULES
        if rest[0] == "-c":
            return False
        rest = rest[1:]
    return bool(rest) and Path(rest[0]).name in WORKFLOW_PROGRAMS


def _own_pids() -> set[int]:
    """This process and its ancestors (a `kge resume` started from a shell script in the directory)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = (PROC / str(pid) / "stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def resume(snakemake_args: list[str], workdir: str | os.PathLike = ".", snakemake: str = "snakemake") -> int:
    """Unlock ``workdir`` when no job is alive there, then run ``snakemake *snakemake_args``; its exit status."""
    alive = live_workers(workdir)
    if alive:
        listing = "\n".join(f"  pid {pid}: {cmd[:160]}" for pid, cmd in alive)
        raise KgeInputError(
            f"kge resume: {len(alive)} snakemake/kge process(es) still run in {Path(workdir).resolve()}; "
            f"wait for them or stop them (kill PID), then rerun kge resume:\n{listing}"
        )
    locks = Path(workdir) / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        print(
            "kge resume: no snakemake or kge job runs here; removing the stale lock (snakemake --unlock)",
            file=sys.stderr,
        )
        done = subprocess.run([snakemake, "--unlock", *snakemake_args], cwd=workdir, stdout=subprocess.DEVNULL)
        if done.returncode:
            return done.returncode
    print(f"kge resume: {snakemake} {' '.join(snakemake_args)}", file=sys.stderr)
    return subprocess.run([snakemake, *snakemake_args], cwd=workdir).returncode
