"""Write a miniature (kge data mini --out MINI) as labelled train/valid/test TSV files, for the import
measurements of benchmarks/import_features.md.

    python benchmarks/import_features_to_tsv.py MINI OUT     # OUT/train.tsv, valid.tsv, test.tsv (Q<id> P<id> Q<id>)
"""

import sys
from pathlib import Path

import numpy as np


def write(path: Path, h, r, t) -> None:
    with open(path, "w") as f:
        for a, b, c in zip(h, r, t):
            f.write(f"Q{a}\tP{b}\tQ{c}\n")


def main(mini: str, out: str) -> None:
    src = Path(mini) / "wikikg90m-v2" / "processed"
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    train = np.load(src / "train_hrt.npy")
    write(target / "train.tsv", train[:, 0], train[:, 1], train[:, 2])
    val_hr, val_t = np.load(src / "val_hr.npy"), np.load(src / "val_t.npy")
    write(target / "valid.tsv", val_hr[:, 0], val_hr[:, 1], val_t)
    test_hr, test_t = np.load(src / "test-dev_hr.npy"), np.load(Path(mini) / "mini-answers" / "test-dev_t.npy")
    write(target / "test.tsv", test_hr[:, 0], test_hr[:, 1], test_t)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
