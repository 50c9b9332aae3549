"""Many models into one answer: the 85-model recipe, rank-power ensembles, their analysis and
evaluation, and the OGB submission."""
