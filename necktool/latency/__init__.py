"""Timing exported necks: latency in PyTorch and each runtime, stage by stage."""
