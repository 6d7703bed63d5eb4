"""Reduced precision: fp16 and int8 versions of an exported graph, and where they lose
precision."""
