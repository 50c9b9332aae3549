"""Bad input through the `kge` command: exit 2, one line naming the file or key, no complete-looking output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from kge.data.layout import dataset_dir, write_marker, write_meta, write_split_arrays

E, R = 40, 3


def _dataset(root, **override):
    rng = np.random.default_rng(1)
    arrays = dict(
        train_hrt=np.stack([rng.integers(0, E, 400), rng.integers(0, R, 400), rng.integers(0, E, 400)], 1),
        entity_feat=rng.normal(size=(E, 16)).astype(np.float16),
        relation_feat=rng.normal(size=(R, 16)).astype(np.float16),
        val_hr=np.stack([rng.integers(0, E, 20), rng.integers(0, R, 20)], 1),
        val_t=rng.integers(0, E, 20),
        test_dev_hr=np.stack([rng.integers(0, E, 15), rng.integers(0, R, 15)], 1),
        test_challenge_hr=np.stack([rng.integers(0, E, 10), rng.integers(0, R, 10)], 1),
    )
    arrays.update(override)
    ds = dataset_dir(root)
    write_split_arrays(ds, **arrays)
    write_meta(ds, E, R)
    write_marker(ds)
    return root


def _kge(*args):
    return subprocess.run([sys.executable, "-m", "kge", *map(str, args)], capture_output=True, text=True)


def _one_line_error(run, *fragments):
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("kge: error:")]
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_out_of_range_id_stops_sharding_with_nothing_written(tmp_path):
    train = np.array([[0, 0, 1], [2, 1, E + 7]] * 10)
    root = _dataset(tmp_path / "data", train_hrt=train)
    out = tmp_path / "shards"
    _one_line_error(_kge("shard", "--root", root, "--out", out, "--shards", "2"), "train_hrt.npy")
    assert not out.exists()


def test_nan_feature_and_missing_file(tmp_path):
    feat = np.zeros((E, 16), dtype=np.float16)
    feat[5, 3] = np.nan
    root = _dataset(tmp_path / "nan", entity_feat=feat)
    stamp = tmp_path / "nan.ok"
    _one_line_error(_kge("data", "check", "--root", root, "--stamp", stamp), "entity_feat.npy")
    assert not stamp.exists()
    root = _dataset(tmp_path / "missing")
    (dataset_dir(root) / "processed" / "val_t.npy").unlink()
    _one_line_error(_kge("data", "check", "--root", root), "val_t.npy")


def test_empty_split(tmp_path):
    root = _dataset(tmp_path / "d", val_hr=np.zeros((0, 2), dtype=np.int64), val_t=np.zeros((0,), dtype=np.int64))
    _one_line_error(_kge("data", "check", "--root", root), "val_hr.npy")


def test_mistyped_model_key_and_bad_json(tmp_path):
    out = tmp_path / "config.json"
    _one_line_error(
        _kge("config", "model", "--name", "m", "--json", json.dumps({"learning_rat": 0.1}), "--out", out),
        "learning_rat",
        "models.m",
    )
    _one_line_error(_kge("config", "model", "--name", "m", "--json", "{not json", "--out", out), "model 'm'")
    assert not out.exists()


def test_missing_inputs_of_later_steps(tmp_path):
    _one_line_error(
        _kge("submit", "--root", tmp_path, "--ensemble-dir", tmp_path / "none", "--out-dir", tmp_path / "sub"),
        "summary.json",
    )
    _one_line_error(
        _kge(
            "train",
            "--config",
            tmp_path / "nope.json",
            "--root",
            tmp_path,
            "--shard-dir",
            tmp_path,
            "--out",
            tmp_path / "m",
        ),
        "nope.json",
    )
