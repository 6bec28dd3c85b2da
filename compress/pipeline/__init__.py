"""Passes, the model state they transform, and the resumable runner."""
