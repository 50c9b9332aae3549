"""kge: BESS knowledge-graph-embedding training, scoring, ensembling and OGB submission."""

__version__ = "0.1.0"
