import numpy as np, sys
from pathlib import Path
src = Path("/tmp/imp/mini/wikikg90m-v2/processed"); out = Path("/tmp/imp/tsv"); out.mkdir(exist_ok=True)
def w(name, h, r, t):
    with open(out / name, "w") as f:
        for a, b, c in zip(h, r, t): f.write(f"Q{a}\tP{b}\tQ{c}\n")
tr = np.load(src / "train_hrt.npy"); w("train.tsv", tr[:, 0], tr[:, 1], tr[:, 2])
vh = np.load(src / "val_hr.npy"); vt = np.load(src / "val_t.npy"); w("valid.tsv", vh[:, 0], vh[:, 1], vt)
th = np.load(src / "test-dev_hr.npy"); tt = np.load("/tmp/imp/mini/mini-answers/test-dev_t.npy"); w("test.tsv", th[:, 0], th[:, 1], tt)
