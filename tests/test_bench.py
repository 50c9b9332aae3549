"""`kge bench`: one JSON line whose ratios are consistent with its own measurements."""

import json
import subprocess
import sys


def test_bench_train_and_predict_report_consistent_json(mini_root, mini_shards):
    common = [
        "--score-fn",
        "distmult",
        "--dim",
        "32",
        "--root",
        str(mini_root),
        "--shard-dir",
        str(mini_shards),
        "--threads",
        "1",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "kge", "bench", "train", *common, "--batch", "64", "--negatives", "64", "--steps", "5"],
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = run.stdout.strip().splitlines()
    r = json.loads(line)
    assert r["triples_per_s"] > 0 and r["matmul_gflops"] > 0
    assert abs(r["triples_per_s"] * r["seconds"] - 64 * 5) < 1e-6 * 64 * 5
    assert abs(r["fraction_of_matmul"] - r["model_gflops"] / r["matmul_gflops"]) < 1e-9
    assert 0.5 < sum(r["phase_share"].values()) <= 1.0 + 1e-9  # phases cover the step; the rest is loop overhead
    run = subprocess.run(
        [sys.executable, "-m", "kge", "bench", "predict", *common, "--queries", "300", "--top-k", "10"],
        capture_output=True,
        text=True,
        check=True,
    )
    p = json.loads(run.stdout)
    assert p["queries_per_s"] > 0 and abs(p["queries_per_s"] * p["seconds"] - 300) < 1e-6 * 300
    assert abs(p["scoring_gflops"] - 2 * 300 * p["entities"] * 32 / p["seconds"] / 1e9) < 1e-9


def test_bench_train_with_two_workers_counts_both(mini_root, mini_shards):
    """--workers 2: torchrun runs two BESS workers; one JSON line (rank 0) counting both workers' triples."""
    common = [
        "--score-fn",
        "distmult",
        "--dim",
        "32",
        "--root",
        str(mini_root),
        "--shard-dir",
        str(mini_shards),
        "--threads",
        "2",
    ]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kge",
            "bench",
            "train",
            *common,
            "--batch",
            "64",
            "--negatives",
            "64",
            "--steps",
            "4",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in run.stdout.strip().splitlines() if x.startswith("{")]
    r = json.loads(line)
    assert r["workers"] == 2
    assert abs(r["triples_per_s"] * r["seconds"] - 2 * 64 * 4) < 1e-6 * 2 * 64 * 4
    assert r["phase_share"]["exchange"] > 0  # the AllToAll and all-reduce were timed


def test_bench_distance_and_loss_options(mini_root, mini_shards):
    """--distance and --loss reach the trained model (every variant of the recipe can be measured), and
    the JSON names the distance kernels' backend and the first step's time."""
    common = [
        "--score-fn",
        "rotate",
        "--dim",
        "16",
        "--root",
        str(mini_root),
        "--shard-dir",
        str(mini_shards),
        "--threads",
        "1",
    ]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kge",
            "bench",
            "train",
            *common,
            "--distance",
            "1",
            "--loss",
            "logsigmoid",
            "--batch",
            "32",
            "--negatives",
            "32",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert (r["score_fn"], r["distance"], r["loss"]) == ("rotate", 1, "logsigmoid")
    assert r["distance_kernels"] == "native" and r["first_step_s"] > 0
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kge",
            "bench",
            "predict",
            *common,
            "--distance",
            "2",
            "--queries",
            "50",
            "--top-k",
            "5",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(run.stdout)["distance"] == 2
