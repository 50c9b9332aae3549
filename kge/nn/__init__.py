"""The model's numerics: the scorer registry, scoring functions, fused distance kernels, losses and
the model (relation embeddings and the feature encoder)."""
