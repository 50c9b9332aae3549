"""The 1/F WikiKG90Mv2-shaped graph: exact OGB layout, real proportions, chunk-independent streaming."""

import hashlib
import math

import numpy as np
import pytest

from kge.cli import main
from kge.common.errors import KgeInputError
from kge.data.layout import answers_dir, dataset_dir, load_with_ogb, open_dataset
from kge.data.mini import mini_statistics
from kge.data.scaled import BLOCK, generate_scaled, scaled_sizes

F = 6000  # 15,205 entities in 2 head blocks, 100,177 triples: about 2 s a generation


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled")
    generate_scaled(root, fraction=F, seed=0, progress=False)
    return root


def _digest(root):
    h = hashlib.sha256()
    # meta.pt is a torch zip whose record names follow the temporary file name: compared via open_dataset.
    for p in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".npy", ".json", ".txt")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_sizes_in_real_proportions():
    assert scaled_sizes(32) == (2_850_957, 18_783_213, 245)
    assert scaled_sizes(1) == (91_230_610, 601_062_811, 1387)
    E, T, R = scaled_sizes(F)
    assert (E, R) == (round(91_230_610 / F), 100) and T == round(601_062_811 / F)
    assert E > BLOCK  # the fixture streams more than one block
    for bad in (0.5, 0, -3, float("nan"), 1e9):
        with pytest.raises(KgeInputError):
            scaled_sizes(bad)


def test_layout_exact(scaled):
    ds = dataset_dir(scaled)
    assert (ds / "RELEASE_v1.txt").is_file()
    assert not [p for p in scaled.rglob(".tmp-*")]  # the streamed files were renamed into place
    kg = open_dataset(scaled, check=True, progress=False)
    E, T, R = scaled_sizes(F)
    assert (kg.num_entities, kg.num_relations) == (E, R) and type(kg.num_entities) is int
    assert kg.train_hrt.shape == (T, 3) and kg.train_hrt.dtype == np.int64
    assert kg.entity_feat.shape == (E, 768) and kg.entity_feat.dtype == np.float16
    assert kg.relation_feat.shape == (R, 768) and kg.relation_feat.dtype == np.float16
    assert kg.val_hr.shape == (15000, 2) and kg.val_t.shape == (15000,)
    assert kg.test_dev_hr.shape == (15000, 2) and kg.test_challenge_hr.shape == (10000, 2)
    assert np.load(answers_dir(scaled) / "test-dev_t.npy").shape == (15000,)
    assert np.load(answers_dir(scaled) / "test-challenge_t.npy").shape == (10000,)
    assert not (ds / "processed" / "test-dev_t.npy").exists()
    norms = np.linalg.norm(np.asarray(kg.entity_feat, np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)  # every feature row written (a hole would be all zeros)


def test_loads_with_real_ogb(scaled):
    ds = load_with_ogb(scaled)
    assert ds.num_entities == scaled_sizes(F)[0]
    assert ds.train_hrt.shape == (scaled_sizes(F)[1], 3)
    assert ds.valid_dict["h,r->t"]["hr"].shape == (15000, 2)
    assert ds.test_dict("test-dev")["h,r->t"]["hr"].shape == (15000, 2)
    assert ds.test_dict("test-challenge")["h,r->t"]["hr"].shape == (10000, 2)
    assert ds.entity_feat.shape == (scaled_sizes(F)[0], 768)


def test_proportions(scaled):
    s = mini_statistics(scaled)
    assert 6.4 <= s["training_triples"] / s["entities"] <= 6.8
    assert s["dominant_relation"] == 0 and 0.39 <= s["dominant_share_train"] <= 0.43
    assert 0.03 <= s["dominant_share_valid"] <= 0.06
    assert s["corr_valid_rel_freq_vs_cuberoot_train"] > 0.95
    assert s["corr_valid_rel_freq_vs_cuberoot_train"] > s["corr_valid_rel_freq_vs_train"]
    assert 0.15 <= s["valid_tails_unseen_as_train_tail"] <= 0.25
    assert 1.5 <= s["degree_powerlaw_alpha_xmin10"] <= 3.5
    assert s["degree_max"] > 20 * s["degree_median"]


def _keys(hrt, E, R):
    return (hrt[:, 0] * R + hrt[:, 1]) * E + hrt[:, 2]


def test_queries_held_out_and_distinct(scaled):
    kg = open_dataset(scaled, check=False)
    E, R = kg.num_entities, kg.num_relations
    train = _keys(np.asarray(kg.train_hrt), E, R)
    assert len(np.unique(train)) == len(train)
    ans = answers_dir(scaled)
    q = np.concatenate(
        [
            np.column_stack([kg.val_hr, kg.val_t]),
            np.column_stack([kg.test_dev_hr, np.load(ans / "test-dev_t.npy")]),
            np.column_stack([kg.test_challenge_hr, np.load(ans / "test-challenge_t.npy")]),
        ]
    )
    qk = _keys(q, E, R)
    assert len(np.unique(qk)) == 40000
    assert not np.isin(qk, train).any()


def test_deterministic_and_chunk_independent(scaled, tmp_path):
    # Chunks of 7,777 train rows (and 121 feature rows) cut across blocks and never divide the totals.
    generate_scaled(tmp_path / "small_chunks", fraction=F, seed=0, chunk=7777, progress=False)
    generate_scaled(tmp_path / "other_seed", fraction=F, seed=1, progress=False)
    assert _digest(tmp_path / "small_chunks") == _digest(scaled)
    assert _digest(tmp_path / "other_seed") != _digest(scaled)


def test_cli_bad_fraction(tmp_path, capsys):
    assert main(["data", "scaled", "--fraction", "0.5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fraction" in err[0]
    assert not dataset_dir(tmp_path / "x").exists()
    with pytest.raises(KgeInputError):
        generate_scaled(tmp_path / "y", fraction=F, chunk=0, progress=False)
    assert math.isclose(scaled_sizes(F)[1] / scaled_sizes(F)[0], 601_062_811 / 91_230_610, rel_tol=1e-3)


def test_interrupted_write_leaves_nothing_complete(scaled, tmp_path, monkeypatch):
    """A failure mid-stream (here: in the second block) over a complete folder leaves no marker, the
    old arrays untouched and no temporary files."""
    import shutil

    import kge.data.scaled as sc

    root = tmp_path / "again"
    shutil.copytree(scaled, root)
    before = (dataset_dir(root) / "processed" / "train_hrt.npy").read_bytes()
    real_block = sc._block

    def failing(plan, seed, b, *args):
        if b == 1:
            raise RuntimeError("interrupted")
        return real_block(plan, seed, b, *args)

    monkeypatch.setattr(sc, "_block", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_scaled(root, fraction=F, seed=1, progress=False)
    assert not (dataset_dir(root) / "RELEASE_v1.txt").exists()
    assert not list(root.rglob(".tmp-*"))
    assert (dataset_dir(root) / "processed" / "train_hrt.npy").read_bytes() == before
