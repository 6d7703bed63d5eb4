"""What a profile, sweep, budget check or bench will do, checked once (torch-free).

A plan is built at the border (the CLI, or a library call such as
:func:`necktool.profile`) from what the user asked for; building it does every
validation (the neck resolves, the batch and sizes are in range, the memory fits, the
timing counts and runtimes make sense), once. Running it
(:func:`necktool.analysis.profiling.run_profile`, :func:`necktool.latency.bench.run_bench`)
trusts it and never checks again.

A plan is frozen and has a stable :meth:`~ProfilePlan.content_hash`: the SHA-256 of a
canonical JSON of the fields that decide its result (necktool's version is not in it; a
cache keyed on the hash adds the versions it depends on itself).

Adding an option is one line here (a field, with its default) plus where
:meth:`BenchPlan.build` (or the caller) fills it; the hash picks it up from
:meth:`to_dict`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from necktool.errors import InputError
from necktool.report import size_text
from necktool.spec.fields import FIELD, BadValue
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec
from necktool.spec.resources import forward_bytes, require

if TYPE_CHECKING:  # numpy: only a bench with data needs it
    pass

Size = tuple[int, int]


def content_hash(kind: str, fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``{"plan": kind, **fields}`` as canonical JSON (sorted keys, no
    whitespace): equal for equal plans, in any process and on any machine."""
    text = json.dumps({"plan": kind, **fields}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def check_batch(batch: int) -> int:
    """The batch size, range-checked like the ``--batch`` flag."""
    try:
        return int(FIELD["batch"].check(batch))
    except BadValue as exc:
        raise InputError(f"batch: {exc.message(repr(batch))}") from None




@dataclasses.dataclass(frozen=True)
class ProfilePlan:
    """One neck profiled at one or more input sizes (``profile``: its input size;
    ``sweep``: the sweep's sizes; ``check``: a budget entry's size).

    Made directly from a :class:`NeckSpec` (already valid) it checks the batch, the
    sizes and the memory each forward needs; :meth:`build` resolves a name first.

    Attributes:
        spec: The resolved neck.
        batch: Batch size of every forward.
        sizes: Input sizes ``(H, W)``, distinct, in order; default ``(spec.input_size,)``.
    """

    spec: NeckSpec
    batch: int = 1
    sizes: tuple[Size, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", check_batch(self.batch))
        sizes = tuple(dict.fromkeys((int(h), int(w)) for h, w in self.sizes)) \
            or (self.spec.input_size,)
        for size in sizes:
            if size != self.spec.input_size:  # the spec checked its own size
                self.spec.check_size(size)
            require(forward_bytes(self.spec, size, self.batch),
                    f"{self.spec.label} at {size_text(size)}, batch {self.batch},")
        object.__setattr__(self, "sizes", sizes)

    @classmethod
    def build(cls, neck: str | NeckSpec, *, input_size: Size | None = None,
              sizes: Sequence[Size] = (), batch: int = 1, **overrides: Any) -> ProfilePlan:
        """Resolve ``neck`` with ``overrides`` (``input_size`` among them) and check the
        rest: the plan of :func:`necktool.profile`."""
        spec = resolve_spec(neck, input_size=input_size, **overrides)
        return cls(spec, batch, tuple(sizes))

    @property
    def steps(self) -> int:
        """Traces the run makes (one per size): a progress bar's total."""
        return len(self.sizes)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "name": self.spec.label, "batch": self.batch,
                "sizes": [list(s) for s in self.sizes]}

    def content_hash(self) -> str:
        """SHA-256 of what decides the profile: the resolved spec and its name, the batch
        and the sizes (see the module docstring)."""
        return content_hash("profile", self.to_dict())




