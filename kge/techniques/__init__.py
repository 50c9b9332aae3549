"""Techniques measured beside the ensemble: studies, sweeps and quantisation of trained models."""
