"""Techniques measured beside the ensemble: studies, sweeps and quantization of trained models."""
