"""The units necktool reports in, stated once (torch-free)."""

from __future__ import annotations

UNIT = "flops"
UNIT_NOTE = "fvcore convention: 1 fused multiply-add = 1 flop (MACs), as in SCRFD's GFLOPs"
UNIT_CAPTION = "FLOPs in fvcore units: 1 fused multiply-add = 1 flop"
UNIT_SHORT = "fvcore: 1 multiply-add = 1 flop"
GFLOPS = 10**9  # GFLOPs = flops / 1e9
MPARAMS = 10**6  # Mparams = params / 1e6
SCALE_NOTE = "GFLOPs = fvcore flops / 1e9 (1 fused multiply-add = 1 flop); Mparams = params / 1e6"
