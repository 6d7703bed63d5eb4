"""Shipping a neck: ONNX export, the file's metadata and the inputs it serves, fp16/int8
conversion, verification against PyTorch and its comparison, and exporting a project's
config."""
