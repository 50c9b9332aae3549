"""Shared fixtures and the suite's scheduling under pytest-xdist.

- One small miniature and its shards per test session, built once and shared by every xdist worker.
- The Snakemake test configurations live in ``.test/`` (YAML); tests lay them over config.yaml and
  fill in their temporary paths (``load_test_config``, ``write_config``).
- The longest tests are collected first, so that ``--dist loadgroup`` (pyproject.toml) starts them
  first and the short ones fill in around them; tests marked ``xdist_group`` run on one worker.
- In a run of a good part of the suite, one background process builds the native distance kernels
  (or finds them in torch's extension cache) while the first tests run.

Process groups under xdist: no test and no code under test uses a fixed port, so no two xdist
workers can ask for the same one. Tests that spawn workers themselves (test_distributed,
test_encoders) rendezvous through a file in their own tmp_path (file://). `kge` commands with
workers > 1 (test_bench, test_train_resume, the pipeline's two-worker models) run `torchrun
--standalone`: its rendezvous store listens on a port the kernel assigns (port 0, bound at once).
Runs without restarts (kge predict, kge bench) share that store with their workers; training, which
may restart, gives its workers their own store on torch's free-port probe (a port the kernel
assigns, released and bound again by worker 0; kge/dist/launch.py): a random free port, not a
per-worker one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIGS = REPO / ".test"

# Seconds the longest tests took (--durations of one process on 2 cores, other jobs running): only
# their order matters. They are collected longest first; every other test keeps its place after
# them. A renamed test simply loses its head start. Keys are node ids relative to tests/, the
# xdist_group name in place of the test's for a group (one unit of work), or a file for all its tests.
LONGEST_FIRST = {
    "test_pipeline.py::pipeline": 330,  # the end-to-end run, its techniques run and their six tests
    "test_pipeline.py::test_ensemble_of_the_finished_models_while_the_rest_train": 186,
    "test_pipeline.py::test_imported_graph_runs_to_the_filtered_evaluation": 52,
    "test_train_resume.py::test_killed_worker_group_restarts_and_resumes_to_identical_model": 44,
    "test_distributed.py::test_sharded_topk_equals_single_process_topk[4]": 29,
    "test_pipeline.py::test_mistyped_config_key_fails_before_any_job": 23,
    "test_train_resume.py::test_killed_run_resumes_to_identical_model": 19,
    "test_distributed.py::test_four_workers_match_reference": 19,
    "test_distributed.py::test_two_workers_on_four_shards_match_reference": 16,
    "test_recipe.py::test_dry_run_plans_the_85_models": 14,
    "test_bench.py::test_bench_train_with_two_workers_counts_both": 13,
    "test_bench.py::test_bench_distance_and_loss_options": 13,
    "test_bench.py::test_bench_train_and_predict_report_consistent_json": 12,  # + the kernel build if no warm-up
    "test_distributed.py::test_workers_mask_false_negatives_like_reference[4]": 12,
    "test_encoders.py::test_batch_norm_running_statistics_stay_replicated": 11,
    "test_studies.py::test_dry_run_plans_technique_models_outside_the_ensemble": 11,
    "test_distributed.py::test_two_workers_match_reference": 10,
    "test_distributed.py::test_sharded_topk_equals_single_process_topk[2]": 10,
    "test_recipe.py::test_every_configuration_trains_under_scale": 7,
    "test_distributed.py": 6,
    "test_slurm_profile.py": 6,
    "test_scale_configs.py": 5,
    "test_cli_errors.py": 4,
}


def _expected_seconds(item) -> float:
    rel = item.nodeid.split("tests/", 1)[-1]
    group = item.get_closest_marker("xdist_group")
    if group is not None:
        name = group.args[0] if group.args else group.kwargs.get("name", "")
        rel = f"{rel.split('::')[0]}::{name}"
    return LONGEST_FIRST.get(rel, LONGEST_FIRST.get(rel.split("::")[0], 0))


def pytest_collection_modifyitems(config, items):
    """Under xdist, longest first (a stable sort: the same order on every worker, as xdist requires).
    In one process the order stays the files' own: there it changes nothing but fixture reuse."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: -_expected_seconds(item))


# ----- native distance kernels ------------------------------------------------------------------
# A run of a good part of the suite (tests from WARMUP_FILES test files or more) builds or loads the
# native distance kernels in a background process started once the tests are collected. torch's
# extension build takes a lock in its build directory, so the tests that need the kernels wait for
# that one build instead of starting their own, and the session pays the build (about a minute of
# one core on a machine that has not built them yet) once, overlapped with the first tests. A small
# run leaves it to its first test that needs the kernels, as without this.
WARMUP_FILES = 10
_warmup: subprocess.Popen | None = None


def _start_warmup(config, nodeids) -> None:
    global _warmup
    if _warmup is not None or hasattr(config, "workerinput") or config.option.collectonly:
        return
    if os.environ.get("KGE_DISTANCE_KERNELS", "auto").strip().lower() not in ("auto", "native", ""):
        return
    if len({nodeid.split("::")[0] for nodeid in nodeids}) < WARMUP_FILES:
        return
    _warmup = subprocess.Popen(
        [sys.executable, "-c", "from kge.nn.fused_distance import native_module; native_module()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pytest_collection_finish(session):
    _start_warmup(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _start_warmup(node.config, ids)


def pytest_unconfigure(config):
    # Waited for, never killed: a build killed while it holds torch's lock leaves the lock behind,
    # and every later build on the machine would wait on it forever.
    if _warmup is not None and not hasattr(config, "workerinput"):
        _warmup.wait()


# ----- worker processes ---------------------------------------------------------------------------
# Modules the fork server imports once, so that each spawned worker starts as a fork of a process
# that has them instead of importing torch and kge afresh (about 3 s of CPU each, 22 workers a run).
FORKSERVER_PRELOAD = ["torch", "kge.train.trainer", "kge.predict.predictor", "bess_reference"]


def spawn_workers(fn, args: tuple, nprocs: int) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs, join=True)``, the workers forked by a fork
    server (one per test process, started on first use) that has FORKSERVER_PRELOAD imported. Like
    spawn, and unlike fork, each worker starts from a process that has run no torch op and holds no
    thread or process group; a worker's exception is raised here as ``ProcessRaisedException``."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


# ----- no state carried from one test to the next ------------------------------------------------
@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (an in-process `kge ... --threads N`) sets it for itself
    only: each test starts with the process's own count, whichever tests its xdist worker ran before."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ----- data shared by the whole session -----------------------------------------------------------
def shared_dir(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` run once per session: under xdist the first worker to get here builds it in the
    session's common temporary directory, under a file lock, and the others wait and reuse it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        path = tmp_path_factory.mktemp(name) / name
        build(path)
        return path
    from filelock import FileLock

    common = tmp_path_factory.getbasetemp().parent  # .../pytest-N, one per session (workers: popen-gwK)
    path, done = common / "shared" / name, common / "shared" / f"{name}.done"
    path.parent.mkdir(exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not done.exists():
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory) -> Path:
    """A 0.1-scale miniature (queries keep the real 15000/15000/10000 counts)."""
    from kge.data.mini import generate_mini

    return shared_dir(tmp_path_factory, "mini", lambda path: generate_mini(path, seed=0, scale=0.1, progress=False))


@pytest.fixture(scope="session")
def mini_shards(mini_root, tmp_path_factory) -> Path:
    from kge.bess.shard import shard_dataset

    return shared_dir(
        tmp_path_factory, "shards", lambda path: shard_dataset(mini_root, path, 2, seed=0, progress=False)
    )


# ----- Snakemake test configurations (.test/) ----------------------------------------------------
def load_test_config(name: str) -> dict:
    """``.test/<name>``, a YAML file of config keys."""
    return yaml.safe_load((TEST_CONFIGS / name).read_text())


def write_config(path: Path, *layers: dict) -> Path:
    """The repository's config.yaml with each layer's top-level keys replacing its own, in order,
    written to ``path`` (a complete configuration, as Snakemake's --configfile)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for layer in layers:
        cfg.update(layer)
    path.write_text(yaml.safe_dump(cfg))
    return path
