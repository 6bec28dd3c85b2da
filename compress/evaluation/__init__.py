"""Honest evaluation: accuracy of what ships, fidelity to the fp32 model, size, FLOPs, latency."""
