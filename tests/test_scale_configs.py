"""The scale overlays (workflow/scale/f*.yaml) plan the whole pipeline on a generated WikiKG90Mv2-shaped graph."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fraction", [32])
def test_scale_overlay_plans_generate_shard_train_predict_ensemble_submit(tmp_path, fraction):
    overlay = tmp_path / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results")}))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",  # Snakemake's own files (.snakemake/) in the test's directory, not the repository's
            str(tmp_path),
            "--configfile",
            str(REPO / "workflow" / "scale" / f"f{fraction}.yaml"),
            str(overlay),
            "--cores",
            "2",
            "--nolock",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    root = tmp_path / "data" / f"scaled-f{fraction}-s0"
    assert f"kge data scaled --out {root} --fraction {fraction} --seed 0" in out
    assert f"kge data check --root {root} --stamp" in out  # sampled feature check: no --full
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert {k: int(counts[k]) for k in ("dataset_scaled", "shard", "train", "predict", "ensemble", "submit")} == {
        "dataset_scaled": 1,
        "shard": 1,
        "train": 2,
        "predict": 2,
        "ensemble": 1,
        "submit": 1,
    }
    assert f"--answers {root}/mini-answers" in out  # test MRR from the generator's hidden answers
