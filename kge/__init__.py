"""kge: BESS knowledge-graph-embedding training, scoring, ensembling and OGB submission."""

__version__ = "0.1.0"


def load_model(path, shard_dir=None, root=None, device=None):
    """A trained model (``RESULTS/models/NAME`` or its model.pt) ready for queries by label:
    ``kge.load_model(path).predict_tails("alice", "knows", k=10)``. See kge.predict.inference.load_model."""
    from kge.predict.inference import load_model as _load  # lazy: `import kge` stays cheap (no torch)

    return _load(path, shard_dir=shard_dir, root=root, device=device)
