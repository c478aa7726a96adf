"""Inference-Time Intervention: activations, probes, head shifts, evaluation, baking."""
