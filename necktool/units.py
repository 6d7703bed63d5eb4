"""The units necktool reports in, stated once (torch-free)."""

from __future__ import annotations

UNIT = "flops"
UNIT_NOTE = "fvcore convention: 1 fused multiply-add = 1 flop (MACs), as in SCRFD's GFLOPs"
UNIT_CAPTION = "FLOPs in fvcore units: 1 fused multiply-add = 1 flop"
UNIT_SHORT = "fvcore: 1 multiply-add = 1 flop"
GFLOPS = 10**9  # GFLOPs = flops / 1e9
MPARAMS = 10**6  # Mparams = params / 1e6
SCALE_NOTE = "GFLOPs = fvcore flops / 1e9 (1 fused multiply-add = 1 flop); Mparams = params / 1e6"

# -- memory ---------------------------------------------------------------------------
FP32_BYTES = 4  # every tensor necktool builds is float32; param_bytes = 4 x params
MIB = 2**20  # tables show memory in MiB; the budget keys max-*-mb are MiB too
MEMORY_UNIT = "bytes"
MEMORY_NOTE = ("fp32 bytes; peak = most bytes held at once by tensors the forward creates "
               "(inputs excluded) in a no_grad eager forward")
MIB_CAPTION = "MiB = 2^20 bytes"
MEMORY_SCALE_NOTE = "MiB = bytes / 2^20 (fp32)"

# -- the second count -----------------------------------------------------------------
CROSS_CHECK = "torch.utils.flop_counter"  # whose conv formula gives every profile's second count
COUNTING_BUG = "a counting bug; please report it"


def mib(count: int) -> str:
    """Bytes as MiB with four decimals, the form every table uses."""
    return f"{count / MIB:.4f}"
