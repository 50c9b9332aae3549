"""SLURM profile + `launcher` config key: dry runs print the launcher only for multi-worker models.

A dry run under `executor: slurm` needs snakemake-executor-plugin-slurm importable (test extra).
The resources each dry-run job prints are also fed to the plugin's own sbatch-line builder, so the
test checks what would really be submitted (nodes, tasks, GPUs, CPUs, memory, time).
"""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO, load_test_config, write_config

pytest.importorskip(
    "snakemake_executor_plugin_slurm",
    reason="snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]'); `executor: slurm` cannot load",
)

PROFILE = REPO / "workflow" / "profiles" / "slurm"
# The configuration is .test/slurm/config.yaml over config.yaml, with .test/slurm/launcher.yaml's
# launcher (its worker layout filled in per test) or none.
CONFIG = load_test_config("slurm/config.yaml")
MODELS = CONFIG["models"]
LAUNCHER = load_test_config("slurm/launcher.yaml")["launcher"]
COMMAND = LAUNCHER["command"]


def _config(tmp_path, launcher):
    paths = {"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results")}
    return write_config(tmp_path / "config.yaml", CONFIG, paths, {"launcher": launcher})


def _dry_run(tmp_path, launcher) -> dict:
    """{(rule, model): {"shell": command, "resources": {...}}} of a dry run with the slurm profile."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--workflow-profile",
            str(PROFILE),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(_config(tmp_path, launcher)),
            "--cores",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert f"workflow specific profile {PROFILE}" in out
    jobs = {}
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} )", out):  # one block per job, starting with its timestamp
        rule = re.search(r"^rule (\w+):", block, re.M)
        model = re.search(r"wildcards: model=(\S+)", block)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and model and shell and rule.group(1) in ("train", "predict"):
            res = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            jobs[rule.group(1), model.group(1)] = {
                "shell": shell.group(1),
                "resources": {k: int(v) if v.isdigit() else v for k, v in res.items()},
            }
    assert set(jobs) == {(r, m) for r in ("train", "predict") for m in MODELS}, sorted(jobs)
    return jobs


def _sbatch(resources: dict, threads: int) -> str:
    """The sbatch line snakemake-executor-plugin-slurm would build for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(resources), threads=threads)
    params = {
        "run_uuid": "u",
        "slurm_logfile": "log",
        "comment_str": "c",
        "account": "-A acc",
        "partition": "-p part",
        "workdir": None,
    }
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("per_node, nodes", [(2, 1), (1, 2)])
def test_multi_worker_jobs_get_the_torchrun_launcher(tmp_path, per_node, nodes):
    launcher = dict(LAUNCHER, workers_per_node=per_node)
    jobs = _dry_run(tmp_path, launcher)
    for step in ("train", "predict"):
        multi = jobs[step, "duo"]
        shell = multi["shell"]
        assert shell.lstrip().startswith("srun ") and f" kge {step} " in shell
        assert f"torchrun --nnodes={nodes} --nproc-per-node={per_node} --rdzv-backend=c10d" in shell
        assert (
            f"--nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={4 * per_node} --gres=gpu:{per_node}"
            in shell
        )
        assert "--rdzv-endpoint=$(hostname):29500 --rdzv-id=${SLURM_JOB_ID}" in shell  # shell variables untouched
        assert f"--threads {4 * per_node}" in shell  # kge splits it among the node's workers: 4 each
        res = multi["resources"]
        assert (
            res["nodes"] == nodes
            and res["mpi"] == "srun"
            and res["cpus_per_task"] == 4
            and res["gres"] == f"gpu:{per_node}"
        )
        assert res["mem_mb"] == 30000 * per_node and res["runtime"] == (2880 if step == "train" else 120)
        sbatch = _sbatch(res, threads=4 * per_node)
        for flag in (
            f"--nodes={nodes}",
            "--cpus-per-task=4",
            f"--gres=gpu:{per_node}",
            f"--mem {30000 * per_node}",
            f"-t {res['runtime']}",
        ):
            assert flag in sbatch, sbatch
        assert (f"--ntasks-per-node={per_node}" if per_node > 1 else "--ntasks=2") in sbatch, sbatch
        assert "--ntasks-per-gpu" not in sbatch and "--gpus=" not in sbatch, sbatch

        single = jobs[step, "single"]
        assert "torchrun" not in single["shell"] and "srun" not in single["shell"]
        assert single["shell"].lstrip().startswith(f"kge {step} ") and "--threads 4" in single["shell"]
        res = single["resources"]
        assert "mpi" not in res and res["nodes"] == 1 and res["gpu"] == 1 and res["cpus_per_task"] == 4
        sbatch = _sbatch(res, threads=4)
        assert "--nodes=1" in sbatch and "--gpus=1" in sbatch and "--cpus-per-task=4" in sbatch, (
            sbatch
        )  # one task (Slurm's default)
        assert "--ntasks=" not in sbatch and "--ntasks-per" not in sbatch, sbatch


@pytest.mark.timeout(120)
def test_without_launcher_kge_starts_its_own_workers(tmp_path):
    jobs = _dry_run(tmp_path, None)
    for (step, _model), job in jobs.items():
        assert job["shell"].lstrip().startswith(f"kge {step} ") and "torchrun" not in job["shell"]
        assert not {"mpi", "nodes", "gres", "gpu", "tasks"} & set(job["resources"])
        # the profile's defaults apply
        assert job["resources"]["slurm_account"] == "EDIT-your-account" and job["resources"]["runtime"] == 60


def test_launcher_errors_name_the_key(tmp_path):
    bad = {
        "command": COMMAND.replace("{nodes}", "{node}"),
        "workers_per_node": 1,
        "gpus_per_worker": 1,
        "cpus_per_worker": 4,
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(_config(tmp_path, bad)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "launcher.command" in out and "{node}" in out
