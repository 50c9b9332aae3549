"""Submission files: our checks, then ogb's writer; the file round-trips through ogb's format."""

import numpy as np
import pytest

from kge.common.errors import KgeInputError
from kge.ensemble.submission import check_predictions, write_submission


def _valid(rows, num_entities=1000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(num_entities, 10, replace=False) for _ in range(rows)])


@pytest.mark.parametrize("mode, rows", [("test-dev", 15000), ("test-challenge", 10000)])
def test_written_by_ogb_and_round_trips(tmp_path, mode, rows):
    pred = _valid(rows)
    path = write_submission(pred, 1000, mode, tmp_path)
    assert path.name == f"t_pred_wikikg90m-v2_{mode}.npz"
    with np.load(path) as npz:
        assert npz["t_pred_top10"].dtype == np.int32
        assert np.array_equal(npz["t_pred_top10"], pred)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


def test_out_of_range_ids_refused_before_ogb_wraps_them(tmp_path):
    pred = _valid(15000)
    pred[7, 3] = 2**31 + 5
    with pytest.raises(KgeInputError, match="row 7 has ids outside"):
        write_submission(pred, 1000, "test-dev", tmp_path)
    assert not list(tmp_path.glob("*.npz"))


def test_duplicates_and_shapes_refused():
    pred = _valid(10000)
    pred[4, 9] = pred[4, 0]
    with pytest.raises(KgeInputError, match="row 4 repeats"):
        check_predictions(pred, 1000, "test-challenge")
    with pytest.raises(KgeInputError, match=r"expected \(15000, 10\)"):
        check_predictions(_valid(10000), 1000, "test-dev")


def test_leaderboard_text_carries_the_form_fields():
    from kge.ensemble.submission import leaderboard_text, package_versions

    versions = package_versions()
    assert versions["ogb"] and versions["torch"] and versions["python"]
    metadata = {
        "validation_mrr": 0.29216,
        "validation_heldout_mrr": 0.28891,
        "test-dev_mrr": 0.2034,
        "number_of_models": 2,
        "parameters_per_model": {"a": 1_000, "b": 2_500},
        "parameters_total": 3_500,
        "hardware": ["CPU x86_64 x2"],
        "train_seconds": 3725.0,
        "inference_seconds": 61.0,
        "ensemble": {"power": -0.5, "top_k": 100},
        "versions": versions,
        "commit": "abc123",
        "files": {"test-dev": "/x/t_pred_wikikg90m-v2_test-dev.npz"},
    }
    text = leaderboard_text(metadata)
    for expected in (
        "Validation MRR: 0.2922",
        "MRR on the other half: 0.2889",
        "test-dev MRR (local answers, not the official test): 0.2034",
        "Number of models in the ensemble: 2",
        "#Parameters: 3,500 in total (largest model 2,500)",
        "Hardware: CPU x86_64 x2",
        "Training time: 1 h 02 min",
        "Inference time: 1 min 01 s",
        f"ogb {versions['ogb']}",
        "Code commit: abc123",
        "t_pred_wikikg90m-v2_test-dev.npz",
    ):
        assert expected in text, expected
