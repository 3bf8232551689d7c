"""Stored models: self-describing checkpoints, safe loading, the model folders, bundled weights."""
