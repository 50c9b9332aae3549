"""Training one model as one or many BESS workers: the trainer, its checkpoints, resharding and
random-subspace optimisation."""
