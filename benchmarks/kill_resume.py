"""Kill the whole pipeline with SIGKILL at chosen moments, resume it each time with `kge resume`, and
compare its final predictions, ensemble and submission with an uninterrupted run.

    PYTHONPATH=$PWD python benchmarks/kill_resume.py --config workflow/scale/f128.yaml \
        --reference results/scale-f128 --results results/scale-f128-resume [--out benchmarks/kill_resume_f128.json]

The reference run is an earlier plain `snakemake --configfile CONFIG` into --reference. This script
runs the same config with results_dir = --results (a second config file on top; the dataset folder
is shared, so the kills start at the shard job), in its own process group, and kills the group
(Snakemake and every job: `kill -9 -PGID`, then the torchrun workers, which run in sessions of their
own and survive a group kill) at each moment of --moments:

    shard     3 s into the shard job
    train     when the first model has passed its second checkpoint by 150 steps
    predict   20 s into the first prediction job
    ensemble  2 s into the ensemble job

After each kill it runs `kge resume --configfile CONFIG OVERLAY` (which refuses while any job is
alive, removes Snakemake's stale lock and reruns). Lost work per kill: the killed attempts' seconds
of the non-resumable jobs (shard, predict, ensemble restart from scratch), and for a training job the
seconds since its last complete checkpoint (steps past it / the job's measured rate). At the end every
array of predictions/*.npz, ensemble/ensemble.npz and submission/*.npz is compared with the
reference (np.array_equal; the .npz containers carry zip timestamps, so their bytes differ), and the
JSON files of metrics with their timing fields removed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POLL = 0.25


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_everything(proc: subprocess.Popen) -> int:
    """SIGKILL the run's process group, then every snakemake/kge/torchrun process still working in this
    directory: torchrun starts its workers in sessions of their own, so they outlive a group kill.
    Returns how many such orphans there were."""
    from kge.report.resume import live_workers

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    orphans = live_workers(".")
    for pid, _cmd in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1.0)  # let the kernel reap them
    return len(orphans)


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Moments:
    """Predicates on the results folder: each returns (ready, job description, job start time)."""

    def __init__(self, results: Path, models: list[str]):
        self.results, self.models = results, models
        self.seen: dict[str, float] = {}  # log file -> when it first appeared (the job's start)

    def _started(self, log: Path) -> float | None:
        if log.exists() and str(log) not in self.seen:
            self.seen[str(log)] = time.time()
        return self.seen.get(str(log))

    def shard(self):
        started = self._started(self.results / "logs" / "shard.log")
        done = (self.results / "shards" / "shard_meta.json").exists()
        return started is not None and not done and time.time() - started > 3, "shard", started

    def train(self):
        for name in self.models:
            model = self.results / "models" / name
            started = self._started(self.results / "logs" / "train" / f"{name}.log")
            latest = _json(model / "checkpoint" / "latest.json")
            progress = _json(model / "progress.json")
            if started and latest and progress and latest["step"] >= 500 and progress["step"] >= latest["step"] + 150:
                return True, f"train {name}", started
        return False, "train", None

    def predict(self):
        for name in self.models:
            started = self._started(self.results / "logs" / "predict" / f"{name}.log")
            done = (self.results / "predictions" / f"{name}.npz").exists()
            if started and not done and time.time() - started > 20:
                return True, f"predict {name}", started
        return False, "predict", None

    def ensemble(self):
        started = self._started(self.results / "logs" / "ensemble.log")
        done = (self.results / "ensemble" / "ensemble.npz").exists()
        return started is not None and not done and time.time() - started > 2, "ensemble", started


def lost_seconds(
    results: Path, models: list[str], kill_time: float, moments: Moments, what: str, started: float
) -> dict:
    """Seconds of work the kill threw away, per job that was running."""
    lost = {}
    for log, first_seen in moments.seen.items():
        job = Path(log).stem
        kind = Path(log).parent.name  # train / predict / logs
        if kind == "train":
            model = results / "models" / job
            if (model / "model.pt").exists():
                continue
            progress, latest = _json(model / "progress.json"), _json(model / "checkpoint" / "latest.json")
            if progress and progress.get("steps_per_second"):
                kept = latest["step"] if latest else 0
                lost[f"train {job}"] = round(max(0, progress["step"] - kept) / progress["steps_per_second"], 1)
        elif kind == "predict":
            if not (results / "predictions" / f"{job}.npz").exists():
                lost[f"predict {job}"] = round(kill_time - first_seen, 1)
        elif job == "shard" and not (results / "shards" / "shard_meta.json").exists():
            lost["shard"] = round(kill_time - first_seen, 1)
        elif job == "ensemble" and not (results / "ensemble" / "ensemble.npz").exists():
            lost["ensemble"] = round(kill_time - first_seen, 1)
    return lost


def compare(reference: Path, results: Path) -> dict:
    """{file: "identical" | what differs} over the final arrays and metrics."""
    out = {}
    files = sorted(
        p.relative_to(reference)
        for sub in ("predictions", "ensemble", "submission")
        for p in (reference / sub).glob("*.npz")
    )
    for rel in files:
        a, b = np.load(reference / rel), np.load(results / rel) if (results / rel).exists() else None
        if b is None:
            out[str(rel)] = "missing"
            continue
        bad = [key for key in a.files if key not in b.files or not np.array_equal(a[key], b[key])]
        out[str(rel)] = "identical" if not bad and set(a.files) == set(b.files) else f"differs in {bad}"
    timing = {"created", "inference_seconds", "train_seconds", "seconds", "hardware", "tuning_seconds"}
    for rel in sorted(p.relative_to(reference) for p in (reference / "predictions").glob("*.json")):
        a, b = _json(reference / rel), _json(results / rel)
        strip = lambda d: {k: v for k, v in (d or {}).items() if k not in timing}  # noqa: E731
        out[str(rel)] = "identical" if b is not None and strip(a) == strip(b) else "differs"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--reference", required=True, help="results_dir of the uninterrupted run")
    parser.add_argument("--results", required=True, help="results_dir of the interrupted run (must not exist)")
    parser.add_argument("--moments", nargs="+", default=["shard", "train", "predict", "ensemble"])
    parser.add_argument("--out", help="write the record as JSON here")
    args = parser.parse_args()
    import yaml

    results = Path(args.results)
    if results.exists():
        sys.exit(f"{results}: exists; remove it first (the interrupted run starts from nothing)")
    models = list(yaml.safe_load(Path(args.config).read_text())["models"])
    overlay = Path(tempfile.mkdtemp()) / "results.yaml"
    overlay.write_text(f"results_dir: {results}\n")
    config_args = ["--configfile", args.config, str(overlay)]
    moments = Moments(results, models)
    results.parent.mkdir(parents=True, exist_ok=True)
    log = open(f"{results}.kill_resume.log", "w")
    record = {"config": args.config, "kills": []}
    start = time.time()
    proc = _start(["snakemake", *config_args], log)
    for moment in args.moments:
        check = getattr(moments, moment)
        while True:
            ready, what, started = check()
            if ready or proc.poll() is not None:
                break
            for other in ("shard", "train", "predict", "ensemble"):  # note every job start for the lost-time record
                getattr(moments, other)()
            time.sleep(POLL)
        if proc.poll() is not None:
            record["kills"].append({"moment": moment, "skipped": "the run ended before this moment"})
            continue
        kill_time = time.time()
        lost = lost_seconds(results, models, kill_time, moments, what, started)
        orphans = _kill_everything(proc)
        print(
            f"kill_resume: SIGKILL during {what} at {kill_time - start:.0f} s; lost {lost}; {orphans} orphaned workers killed too",
            file=sys.stderr,
        )
        record["kills"].append(
            {
                "moment": moment,
                "job": what,
                "at_seconds": round(kill_time - start, 1),
                "lost_seconds": lost,
                "orphans_killed": orphans,
            }
        )
        moments.seen.clear()
        record["kills"][-1]["stale_lock_left"] = any((Path(".snakemake") / "locks").glob("*"))
        proc = _start(["kge", "resume", *config_args], log)
    proc.wait()
    record["final_exit_status"] = proc.returncode
    record["total_seconds"] = round(time.time() - start, 1)
    record["comparison"] = compare(Path(args.reference), results)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
