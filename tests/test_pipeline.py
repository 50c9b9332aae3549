"""End to end: plain Snakemake on a small miniature, through to ogb-written submission files."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import REPO, load_test_config, write_config

# The configurations are files in .test/pipeline/ (and .test/import/): the end-to-end run is
# config.yaml + pipeline/config.yaml + pipeline/techniques.yaml, written into the run's directory
# with its own data and results paths.
BASE = load_test_config("pipeline/config.yaml")
MODELS = BASE["models"]
TECHNIQUES = load_test_config("pipeline/techniques.yaml")["techniques"]


def _config(tmp_path, *layers: dict, **extra):
    """config.yaml, then pipeline/config.yaml, then ``layers`` and ``extra`` (each top-level key
    replaces config.yaml's), with data and results in ``tmp_path``."""
    paths = {"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results")}
    return write_config(tmp_path / "config.yaml", BASE, *layers, extra, paths)


def _snakemake(tmp_path, config_path, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(config_path),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
    )


# ----- the end-to-end run: one Snakemake run, several tests on its results -----------------------
# The tests below share the session fixtures `pipeline` and `pipeline_techniques`; the xdist group
# keeps them on one worker (each worker would otherwise run the pipeline itself). None depends on
# the order they run in: the techniques run leaves everything of `snakemake all` as it was.
end_to_end = pytest.mark.xdist_group("pipeline")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """`snakemake` (rule all) on the 0.1-scale miniature, through to the submission files -> the run
    directory and the ensemble summary as it was right after the run."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    config_path = _config(tmp_path, {"techniques": TECHNIQUES})
    run = _snakemake(tmp_path, config_path)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((tmp_path / "results" / "ensemble" / "summary.json").read_text())
    return SimpleNamespace(dir=tmp_path, config=config_path, results=tmp_path / "results", summary=summary)


@pytest.fixture(scope="session")
def pipeline_techniques(pipeline):
    """`snakemake techniques` after the run: a study, a sweep and quantisation train and score through
    the pipeline's own rules, beside the ensemble, not in it."""
    techniques = _snakemake(pipeline.dir, pipeline.config, "techniques")
    assert techniques.returncode == 0, techniques.stderr[-4000:]
    return pipeline


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_writes_valid_submission(pipeline):
    from ogb.lsc import WikiKG90Mv2Evaluator

    results = pipeline.results
    evaluator = WikiKG90Mv2Evaluator()
    for mode, rows in (("test-dev", 15000), ("test-challenge", 10000)):
        t_pred = np.load(results / "submission" / f"t_pred_wikikg90m-v2_{mode}.npz")["t_pred_top10"]
        assert t_pred.shape == (rows, 10) and t_pred.dtype == np.int32
        assert t_pred.min() >= 0
        # ogb's own writer accepts it again unchanged (shape, duplicates).
        evaluator.save_test_submission({"h,r->t": {"t_pred_top10": t_pred}}, str(pipeline.dir / "recheck"), mode)


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_ensemble_summary_and_metadata(pipeline):
    results, summary = pipeline.results, pipeline.summary
    assert {m["model"] for m in summary["members"]} == set(MODELS)
    assert sorted(c["added"] for c in summary["greedy_curve"]) == sorted(MODELS)
    assert summary["greedy_curve"][-1]["valid_mrr"] == pytest.approx(summary["ensemble_heldout_mrr"])
    assert {f["family"] for f in summary["leave_one_family_out"]} == {m["score_fn"] for m in MODELS.values()}
    assert all(m["valid_mrr"] > 0 for m in summary["members"])
    for name in ("distmult", "complex"):  # the two-worker models wrote one entity file per shard
        assert len(list((results / "models" / name / "entities").glob("shard_*.pt"))) == 2
    metadata = json.loads((results / "submission" / "metadata.json").read_text())
    assert metadata["number_of_models"] == len(MODELS)
    assert metadata["validation_mrr"] == summary["ensemble_valid_mrr"]
    for key in (
        "ogb_version",
        "parameters_per_model",
        "hardware",
        "train_seconds",
        "inference_seconds",
        "test-dev_mrr",
    ):
        assert key in metadata
    leaderboard = (results / "submission" / "leaderboard.txt").read_text()
    assert (
        f"Validation MRR: {metadata['validation_mrr']:.4f}" in leaderboard
        and metadata["versions"]["snakemake"] in leaderboard
    )


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_plots_and_timing(pipeline):
    results = pipeline.results
    assert (results / "plots" / "training_curves.png").stat().st_size > 0
    assert sorted(p.stem for p in (results / "plots" / "models").glob("*.png")) == sorted(MODELS)  # one curve per model
    assert (results / "plots" / "mrr_by_family.png").stat().st_size > 0
    timing = (results / "plots" / "timing.md").read_text()
    for rule, jobs in (("train", len(MODELS)), ("predict", len(MODELS)), ("ensemble", 1), ("shard", 1)):
        assert f"| {rule} | {jobs} |" in timing, timing


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_second_run_plans_nothing(pipeline):
    again = _snakemake(pipeline.dir, pipeline.config, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_html_report_holds_every_figure_and_table(pipeline):
    report_path = pipeline.dir / "report.html"
    report = _snakemake(pipeline.dir, pipeline.config, "--report", str(report_path))
    assert report.returncode == 0, report.stderr[-3000:]
    html = report_path.read_text()
    for name in [
        "training_curves.png",
        "ensemble.png",
        "mrr_by_family.png",
        "timing.png",
        "timing.md",
        "summary.md",
    ] + [f"{m}.png" for m in MODELS]:
        assert name in html, name


@end_to_end
@pytest.mark.timeout(900)
def test_pipeline_techniques_train_beside_the_ensemble(pipeline_techniques):
    pipeline = pipeline_techniques
    results = pipeline.results
    study = json.loads((results / "techniques" / "mix.json").read_text())
    rows = {row["variant"]: row for row in study["rows"]}
    assert study["rows"][0]["variant"] == "base" and set(rows) == {"base", *TECHNIQUES["studies"]["mix"]["variants"]}
    assert all(row["valid_mrr"] > 0 and row["steps"] == 60 for row in study["rows"])
    assert rows["two_phase"]["changes"] == "two_phase.fraction=0.5, two_phase.negatives=32"
    assert rows["sparse"]["stored_bytes_per_entity"] == 32 * 4 + 2  # 2 of 4 blocks of 16 fp32 values + 2 index bytes
    sweep = json.loads((results / "techniques" / "sweep.json").read_text())
    assert len(sweep["valid_mrr"]) == 2 and set(sweep["bands"]) == {"128"}
    assert (results / "techniques" / "sweep.png").stat().st_size > 0
    assert {row["variant"] for row in json.loads((results / "techniques" / "quantise.json").read_text())} == {
        "e4m3_row"
    }
    assert json.loads((results / "ensemble" / "summary.json").read_text()) == pipeline.summary
    again = _snakemake(pipeline.dir, pipeline.config, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_mistyped_config_key_fails_before_any_job(tmp_path):
    config_path = _config(tmp_path, load_test_config("pipeline/mistyped-ensemble.yaml"))
    run = _snakemake(tmp_path, config_path, "-n")
    assert run.returncode != 0
    assert "memebrs" in run.stdout + run.stderr
    config_path = _config(tmp_path, load_test_config("pipeline/mistyped-model.yaml"))
    run = _snakemake(tmp_path, config_path, "-n")
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "models.bad" in output and "learning_rat" in output
    assert not (tmp_path / "results").exists()


def test_ensemble_of_the_finished_models_while_the_rest_train(tmp_path):
    """ensemble.members: finished -> the ensemble is planned over the models whose model.pt exists,
    the others keep training; before any model has finished the run only trains, and says so."""
    finished = load_test_config("pipeline/finished.yaml")
    models, ensemble = finished["models"], finished["ensemble"]
    config_path = _config(tmp_path, finished)
    early = _snakemake(tmp_path, config_path, "-n", "-p")
    assert early.returncode == 0 and "no model has finished training yet" in early.stdout + early.stderr
    assert "kge ensemble" not in early.stdout and early.stdout.count("kge train ") == 3

    m1 = tmp_path / "results" / "models" / "m1" / "model.pt"
    trained = _snakemake(tmp_path, config_path, str(m1))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert m1.exists() and not (tmp_path / "results" / "models" / "m2" / "model.pt").exists()

    plan = _snakemake(tmp_path, config_path, "-n", "-p")
    assert plan.returncode == 0, plan.stderr[-3000:]
    lines = [line.split("Shell command:", 1)[-1].strip() for line in (plan.stdout + plan.stderr).splitlines()]
    shell = [line for line in lines if line.startswith("kge ")]
    trains = [line for line in shell if line.startswith("kge train")]
    assert sorted("/m2/" in line or "/m3/" in line for line in trains) == [True, True]  # m2, m3 train; m1 is done
    (ensemble_cmd,) = [line for line in shell if line.startswith("kge ensemble")]
    assert "predictions/m1.npz" in ensemble_cmd and "m2.npz" not in ensemble_cmd and "m3.npz" not in ensemble_cmd
    predicts = [line for line in shell if line.startswith("kge predict")]
    assert len(predicts) == 1 and "/m1/" in predicts[0]

    # Run it: m1 is ensembled (and submitted) while m2 and m3 train. The next run adds m2 and m3:
    # only their predictions and the ensemble steps are planned, nothing of m1 and no training.
    first = _snakemake(tmp_path, config_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "ensemble" / "summary.json").read_text())
    assert [m["model"] for m in summary["members"]] == ["m1"]
    again = _snakemake(tmp_path, config_path, "-n", "-p")
    lines = [line.split("Shell command:", 1)[-1].strip() for line in (again.stdout + again.stderr).splitlines()]
    planned = sorted(
        line.split()[1] + ("" if "--name" not in line else ":" + line.split("--name")[1].split()[0])
        for line in lines
        if line.startswith("kge ")
    )
    assert planned == ["ensemble", "plot", "predict:m2", "predict:m3", "submit", "timing"], planned
    done = _snakemake(tmp_path, config_path)
    assert done.returncode == 0, done.stderr[-3000:]

    # Removing a finished model from a named list, or adding it back, replans the ensemble steps only.
    for members in (["m1", "m3"], ["m1", "m2", "m3"]):
        named = _config(tmp_path, finished, ensemble={**ensemble, "members": members})
        plan = _snakemake(tmp_path, named, "-n", "-p")
        lines = [line.split("Shell command:", 1)[-1].strip() for line in (plan.stdout + plan.stderr).splitlines()]
        planned = sorted(line.split()[1] for line in lines if line.startswith("kge "))
        assert planned == ["ensemble", "plot", "submit", "timing"], (members, planned)
        (ensemble_cmd,) = [line for line in lines if line.startswith("kge ensemble")]
        assert all((f"predictions/{m}.npz" in ensemble_cmd) == (m in members) for m in models)
        if members != list(models):  # run the removal, so that re-adding is a change against it
            ran = _snakemake(tmp_path, named)
            assert ran.returncode == 0, ran.stderr[-3000:]
            summary = json.loads((tmp_path / "results" / "ensemble" / "summary.json").read_text())
            assert sorted(m["model"] for m in summary["members"]) == members


@pytest.mark.timeout(600)
def test_imported_graph_runs_to_the_filtered_evaluation(tmp_path):
    """dataset: import with a config naming only the dataset and what it changes: plain snakemake ends
    in results/evaluation/summary.md (no OGB submission); its numbers equal a brute-force computation;
    kge query and kge export work on the result."""
    from test_evaluation import _brute_force

    from kge import cli
    from kge.data.example import write_example

    graph = write_example(tmp_path / "graph", seed=3, people=300)
    user = load_test_config("import/config.yaml")  # names only the dataset and what it changes
    user.update(
        data_dir=str(tmp_path / "data"),
        results_dir=str(tmp_path / "results"),
        **{"import": {key: str(path) for key, path in graph.items()}},
    )
    config_path = tmp_path / "mine.yaml"
    config_path.write_text(yaml.safe_dump(user))
    run = _snakemake(tmp_path, config_path)
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    assert not (results / "submission").exists() and not (results / "predictions").exists()
    summary = json.loads((results / "evaluation" / "summary.json").read_text())
    assert summary["report_split"] == "test" and [r["model"] for r in summary["rows"]][-1] == "ensemble"
    table = (results / "evaluation" / "summary.md").read_text()
    root, shards = tmp_path / "data" / "import", results / "shards"
    for row in summary["rows"][:-1]:
        want = _brute_force(
            results / "models" / row["model"] / "model.pt",
            root,
            shards,
            "inverse" if row["model"] == "transe_inv" else "direct",
        )["test"]
        ranks = np.concatenate([want["tail"], want["head"]])
        # float32 kernels against a float64 reference: a near-tie may swap two candidates, no more.
        assert row["both.realistic.mrr"] == pytest.approx(np.mean(1 / ranks), rel=1e-3)
        assert row["both.realistic.hits@10"] == pytest.approx(np.mean(ranks <= 10), abs=1.01 / len(ranks))
        assert f"{row['both.realistic.mrr']:.4f}" in table
    assert summary["head_prediction"] == {"distmult": "direct", "transe_inv": "inverse"}

    # The trained models answer by label.
    assert (
        cli.main(
            [
                "query",
                str(results),
                "--model",
                "distmult",
                "--head",
                "Person_00007",
                "--relation",
                "born_in",
                "-k",
                "3",
                "--json",
            ]
        )
        == 0
    )
    assert cli.main(["export", str(results), "--model", "transe_inv", "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "entities.parquet").exists() and (tmp_path / "export" / "export.json").exists()
