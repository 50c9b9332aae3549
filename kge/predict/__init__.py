"""Using a trained model: top-K prediction, the OGB and filtered evaluations, queries by label."""
