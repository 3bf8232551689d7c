"""Inference: the one HU -> model input path, device and precision policy, the slice-wise engine.

Builds on :mod:`src_models.io`, :mod:`src_models.nets` and :mod:`src_models.metrics`; never on
training.
"""
