"""Technique studies and sweeps: the models they add to the pipeline, and their reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from kge.common.errors import KgeInputError
from kge.techniques.studies import (
    stable_band,
    study_members,
    study_models,
    study_report,
    sweep_grid,
    sweep_models,
    sweep_report,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
BASE = {
    "score_fn": "distmult",
    "batch_size": 512,
    "learning_rate": 0.01,
    "steps": 2000,
    "validate_every": 500,
    "checkpoint_every": 250,
    "negatives": 256,
    "loss": {"type": "softmax", "in_batch_negatives": False},
}


def test_study_variants_are_the_base_with_overrides():
    studies = {"enc": {"base": "m", "variants": {"grouped": {"features": {"projection": "grouped"}}, "plain": None}}}
    models = study_models(studies, {"m": BASE})
    assert set(models) == {"enc--grouped", "enc--plain"}
    assert models["enc--grouped"] == {**BASE, "features": {"projection": "grouped"}}
    assert models["enc--plain"] == BASE
    assert study_members("enc", studies["enc"]) == ("m", ["enc--grouped", "enc--plain"])
    # Shared settings retrain the base under them as <study>--base.
    studies["enc"]["settings"] = {"steps": 100, "loss": {"type": "logsigmoid"}}
    models = study_models(studies, {"m": BASE})
    assert models["enc--base"]["steps"] == 100 and models["enc--base"]["loss"] == {
        "type": "logsigmoid",
        "in_batch_negatives": False,
    }
    assert models["enc--grouped"]["steps"] == 100
    assert study_members("enc", studies["enc"])[0] == "enc--base"
    # retrain_base: the base as it is, trained again beside the variants.
    again = {"enc": {"base": "m", "retrain_base": True, "variants": {"plain": None}}}
    assert study_models(again, {"m": BASE}) == {"enc--base": BASE, "enc--plain": BASE}
    assert study_members("enc", again["enc"]) == ("enc--base", ["enc--plain"])


def test_study_errors_name_the_config_key():
    with pytest.raises(KgeInputError, match="techniques.studies.enc.base: 'nope'"):
        study_models({"enc": {"base": "nope", "variants": {"a": {}}}}, {"m": BASE})
    with pytest.raises(KgeInputError, match="'base' is the study's own baseline"):
        study_models({"enc": {"base": "m", "variants": {"base": {}}}}, {"m": BASE})


@pytest.mark.parametrize("rule, exponent", [("none", 0.0), ("sqrt", 0.5), ("linear", 1.0)])
def test_sweep_scales_the_learning_rate_and_holds_samples(rule, exponent):
    spec = {"base": "m", "batch_sizes": [128, 512, 2048], "learning_rates": [0.005, 0.02], "scaling": rule}
    grid = sweep_grid("s", spec, {"m": BASE})
    assert [(p["batch_size"], p["base_lr"]) for p in grid] == [
        (b, lr) for b in (128, 512, 2048) for lr in (0.005, 0.02)
    ]
    for p in grid:
        assert p["learning_rate"] == pytest.approx(p["base_lr"] * (p["batch_size"] / 512) ** exponent)
        assert p["steps"] * p["batch_size"] == 2000 * 512  # equal samples
    models = sweep_models({"s": spec}, {"m": BASE})
    small = models["s--b128-lr0.005"]
    assert small["steps"] == 8000 and small["validate_every"] == 2000 and small["checkpoint_every"] == 1000
    assert small["negatives"] == 256  # negatives per positive unchanged
    assert models["s--b2048-lr0.02"]["learning_rate"] == pytest.approx(0.02 * 4**exponent)


def test_sweep_point_equal_to_the_base_is_the_base_model():
    spec = {"base": "m", "batch_sizes": [256, 512], "learning_rates": [0.01, 0.02], "scaling": "linear"}
    grid = sweep_grid("s", spec, {"m": BASE})
    assert [p["model"] for p in grid] == ["s--b256-lr0.01", "s--b256-lr0.02", "m", "s--b512-lr0.02"]
    assert "m" not in sweep_models({"s": spec}, {"m": BASE})


def test_sweep_refuses_in_batch_negatives_and_unknown_rules():
    with pytest.raises(KgeInputError, match="negatives per positive"):
        sweep_grid("s", {"base": "m", "batch_sizes": [64], "learning_rates": [0.1, 0.2]}, {"m": {**BASE, "loss": {}}})
    with pytest.raises(KgeInputError, match="scaling: 'cube'"):
        sweep_grid(
            "s", {"base": "m", "batch_sizes": [64], "learning_rates": [0.1, 0.2], "scaling": "cube"}, {"m": BASE}
        )


def test_stable_band_by_hand():
    lrs = [0.001, 0.002, 0.004, 0.008, 0.016]
    band = stable_band(lrs, [0.10, 0.181, 0.20, 0.19, 0.05], tolerance=0.1)  # threshold 0.18
    assert (band["best_lr"], band["low"], band["high"]) == (0.004, 0.002, 0.008)
    assert band["octaves"] == pytest.approx(2.0) and not band["open_low"] and not band["open_high"]
    # The band stops at the first rate below the threshold, even if a later one is above it again.
    band = stable_band(lrs, [0.20, 0.10, 0.19, 0.05, 0.05], tolerance=0.1)
    assert (band["low"], band["high"], band["octaves"], band["open_low"]) == (0.001, 0.001, 0.0, True)


def _write_member(results, model, mrr, config, loss=1.0, seconds=10.0, parameters=1000):
    (results / "predictions").mkdir(parents=True, exist_ok=True)
    (results / "models" / model).mkdir(parents=True, exist_ok=True)
    (results / "predictions" / f"{model}.json").write_text(
        json.dumps({"model": model, "valid_mrr": mrr, "parameters": parameters, "train_seconds": seconds})
    )
    (results / "models" / model / "history.json").write_text(
        json.dumps(
            {
                "config": config if isinstance(config, dict) else config.to_dict(),
                "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": loss}],
            }
        )
    )


def test_study_report_sets_variants_beside_the_base(tmp_path):
    from kge.config import resolve_model_config

    base = resolve_model_config(BASE)
    _write_member(tmp_path, "m", 0.20, base, loss=1.5, seconds=40.0, parameters=4000)
    _write_member(
        tmp_path,
        "st--half",
        0.15,
        resolve_model_config({**BASE, "dim": 64, "dtype": "float16"}),
        loss=1.7,
        seconds=20.0,
        parameters=2000,
    )
    table, data = study_report("st", "m", ["st--half"], tmp_path, claim="halves the memory")
    base_row, row = data["rows"]
    assert base_row["variant"] == "base" and base_row["change"] == 0.0
    assert row["variant"] == "half" and row["changes"] == 'dim=64, dtype="float16"'
    assert row["change"] == pytest.approx(-0.05) and row["relative_change"] == pytest.approx(-0.25)
    assert (row["stored_bytes_per_entity"], base_row["stored_bytes_per_entity"]) == (
        128.0,
        512.0,
    )  # 64 x 2 bytes, 128 x 4
    assert row["steps_per_second"] == pytest.approx(2000 / 20.0) and row["final_loss"] == 1.7
    assert (
        "Claim: halves the memory" in table
        and '| half | dim=64, dtype="float16" | 0.1500 | -0.0500 (-25.0%) | 2,000 |' in table
    )


def test_sweep_report_heat_map_and_bands(tmp_path):
    spec = {
        "base": "m",
        "batch_sizes": [128, 512],
        "learning_rates": [0.005, 0.01, 0.02],
        "scaling": "sqrt",
        "tolerance": 0.1,
    }
    grid = sweep_grid("s", spec, {"m": BASE})
    values = {
        (128, 0.005): 0.20,
        (128, 0.01): 0.19,
        (128, 0.02): 0.10,
        (512, 0.005): 0.10,
        (512, 0.01): 0.30,
        (512, 0.02): 0.28,
    }
    for p in grid:
        _write_member(tmp_path, p["model"], values[(p["batch_size"], p["base_lr"])], {})
    table, data = sweep_report("s", spec, grid, tmp_path, plot=tmp_path / "heat.png")
    assert (
        data["bands"]["128"]["low"] == 0.005
        and data["bands"]["128"]["high"] == 0.01
        and data["bands"]["128"]["open_low"]
    )
    assert data["bands"]["512"]["octaves"] == pytest.approx(1.0)
    assert data["stable_at_every_batch"] == [0.01]  # 0.19 >= 0.9 x 0.20 and 0.30 is the best of 512
    assert "| 128 | **0.2000** | 0.1900 | 0.1000 | <0.005 - 0.01 | 1.0+ |" in table
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_dry_run_plans_technique_models_outside_the_ensemble(tmp_path):
    # .test/techniques/plan.yaml over config.yaml, with this test's data and results paths.
    overlay = tmp_path / "tech.yaml"
    plan_config = {"results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data")}
    plan_config.update(yaml.safe_load((REPO / ".test" / "techniques" / "plan.yaml").read_text()))
    overlay.write_text(json.dumps(plan_config))

    def plan(target):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-n",
                target,
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",  # Snakemake's own files (.snakemake/) in the test's directory, not the repository's
                str(tmp_path),
                "--configfile",
                str(REPO / "config.yaml"),
                str(overlay),
                "--quiet",
                "rules",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    techniques = plan("techniques")
    # 1 study variant + 3 sweep points (b512-lr0.01 is distmult_softmax itself), each trained and scored.
    for rule, count in (("train", 4 + 1), ("predict", 4 + 1), ("study_report", 1), ("sweep_report", 1)):
        assert any(line.split() == [rule, str(count)] for line in techniques.splitlines()), (rule, techniques)
    everything = plan("all")
    assert "two--tp" not in everything and "sb--" not in everything
    assert any(line.split() == ["train", "8"] for line in everything.splitlines())  # the eight default models only
