"""Training one model as one or many BESS workers: the trainer and its step's phases (with one
exchange strategy and one objective chosen at build), the loop and its callbacks, checkpoints,
resharding and random-subspace optimisation."""
