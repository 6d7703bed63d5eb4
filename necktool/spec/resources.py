"""Refuse work that cannot fit in memory, before any tensor exists (torch-free).

necktool estimates what building and running a neck needs, from the spec alone (fp32
bytes): the parameters (an upper bound: every level's 1x1 lateral plus three 3x3 convs),
the input levels, and :data:`ACTIVATIONS_PER_LEVEL` created tensors per output level;
an export adds the exporter's own working memory and copies of the weights. Work whose
estimate exceeds the limit is refused with exit 2 and both figures.

The limit is the memory available now (``MemAvailable``, or a container's cgroup limit
when lower), unless ``--max-memory SIZE`` (a root option) or ``$NECKTOOL_MAX_MEMORY``
says otherwise (``64G``, ``512M``, ``none`` for no limit).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from necktool.errors import InputError, SpecError
from necktool.units import FP32_BYTES

if TYPE_CHECKING:
    from necktool.spec.neck_spec import NeckSpec

ENV = "NECKTOOL_MAX_MEMORY"

ACTIVATIONS_PER_LEVEL = 12  # tensors the forward makes per output level (PAFPN: ~11)
EXPORTER_BYTES = 1 << 30  # torch.export and the ONNX optimizer's own working set
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def human(nbytes: float) -> str:
    """``2.1 TB``-style figures (powers of 1024, as free(1) and the kernel report them)."""
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def parse_memory_size(text: str, what: str = ENV) -> int | None:
    """``64G``, ``512M``, ``1.5T``, ``100000000`` -> bytes; ``none`` -> ``None`` (no limit)."""
    raw = text.strip()
    if raw.lower() in ("none", "unlimited", "0"):
        return None
    found = _SIZE.fullmatch(raw) if len(raw) <= 20 else None
    if not found:
        raise InputError(f"{what}: cannot read {raw[:40]!r} as a memory size; expected e.g. "
                         "64G, 512M or none")
    return int(float(found[1]) * _UNITS[found[2].lower()])


def available() -> int | None:
    """Bytes available to this process now, or ``None`` when it cannot be told."""
    figures = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    figures.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            figures.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(figures) if figures else None


_override: str | None = None


def set_limit(text: str | None) -> None:
    """Set (``None``: clear) this process's limit, as ``--max-memory`` does; it wins over
    ``$NECKTOOL_MAX_MEMORY``."""
    global _override
    if text is not None:
        parse_memory_size(text, "--max-memory")
    _override = text


def limit() -> tuple[int | None, str]:
    """The limit in bytes (``None``: none) and where it comes from, for messages."""
    configured = _override if _override is not None else os.environ.get(ENV)
    if configured is not None:
        return parse_memory_size(configured), \
            f"the limit {configured.strip()} ({ENV} or --max-memory)"
    free = available()
    return free, "this machine has " + (human(free) if free is not None else "?") + " available"


def param_bound(spec: NeckSpec) -> int:
    """An upper bound of a neck's parameters from its spec (no module built)."""
    out = spec.out_channels
    per_level = out * out * 9 * 3 + 6 * out
    return sum(c * out for c in spec.in_channels) + spec.num_levels * per_level


def forward_bytes(spec: NeckSpec, input_size: Sequence[int], batch: int) -> int:
    """Parameters, inputs and activations of one forward, in fp32 bytes (an estimate)."""
    size = (int(input_size[0]), int(input_size[1]))
    inputs = sum(batch * c * h * w for c, (h, w) in
                 zip(spec.in_channels, spec.input_sizes(size), strict=True))
    outputs = sum(batch * spec.out_channels * h * w for h, w in spec.level_sizes(size))
    return FP32_BYTES * (param_bound(spec) + inputs + ACTIVATIONS_PER_LEVEL * outputs)


def export_bytes(spec: NeckSpec, input_size: Sequence[int], batch: int) -> int:
    """An export: the forward, the exporter's working set and a few copies of the weights."""
    return forward_bytes(spec, input_size, batch) + EXPORTER_BYTES \
        + 4 * FP32_BYTES * param_bound(spec)


def require(nbytes: int, what: str) -> None:
    """Raise :class:`SpecError` (exit 2) unless ``nbytes`` fit under the limit."""
    cap, source = limit()
    if cap is not None and nbytes > cap:
        raise SpecError(f"{what} needs about {human(nbytes)} of memory; {source}; reduce "
                        f"--batch, --input-size or the channels (or set --max-memory / {ENV})")
