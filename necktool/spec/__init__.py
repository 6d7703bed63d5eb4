"""What a neck is, torch-free: the build flags (fields), the families, the validated spec
and the preset registry."""
