"""Where a neck's weights come from: the request a command makes, and the record of what
was loaded (torch-free vocabulary)."""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from collections.abc import Mapping
from typing import Any

from necktool.files import file_sha256
from necktool.spec.fields import is_int

SEEDED_INIT = "necktool-seeded-v1: build_neck(seed) + randomize_norms(seed)"


class WeightsKind(enum.StrEnum):
    """What a weights request reads: nothing (a seed), a checkpoint or an ONNX file."""

    SEED = "seed"  # drawn from a seed (see SEEDED_INIT)
    CHECKPOINT = "checkpoint"  # a .pt/.pth state dict (torch.load(weights_only=True))
    ONNX = "onnx"  # a detector or neck ONNX file's initializers (not loaded yet)


@dataclasses.dataclass(frozen=True)
class WeightsRequest:
    """Where a command's weights should come from: the one request type from the CLI's
    ``--seed``/``--weights``/``--prefix`` to :func:`necktool.deploy.model.make_model`.

    ``None`` means "not given": a command fills it (``export``: seed 0; ``verify``: what
    the file records). A file wins over a seed. What was actually loaded is recorded as a
    :class:`WeightSource` (with the file's SHA-256).

    Example:
        >>> WeightsRequest(path=pathlib.Path("det.onnx")).kind.value
        'onnx'
    """

    seed: int | None = None
    path: pathlib.Path | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, pathlib.Path):
            object.__setattr__(self, "path", pathlib.Path(self.path))

    @property
    def kind(self) -> WeightsKind:
        if self.path is None:
            return WeightsKind.SEED
        return WeightsKind.ONNX if self.path.suffix.lower() == ".onnx" \
            else WeightsKind.CHECKPOINT

    @property
    def given(self) -> bool:
        """A seed or a file was asked for."""
        return self.seed is not None or self.path is not None

    def to_dict(self) -> dict[str, Any]:
        """What decides the weights (a plan's content hash): the seed, or the file's kind,
        SHA-256 and prefix (not its path: the same bytes elsewhere are the same weights)."""
        if self.path is None:
            return {"kind": WeightsKind.SEED.value, "seed": self.seed or 0}
        return {"kind": self.kind.value, "sha256": file_sha256(self.path),
                "prefix": self.prefix}


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """How a model's weights were made; written into an exported file's metadata (the
    record of what a :class:`WeightsRequest` loaded)."""

    source: str  # "seed" or "file"
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None
    prefix: str | None = None
    stripped: tuple[str, ...] = ()
    note: str | None = None  # how the file's tensors were mapped (a detector ONNX's folded norm)

    def to_dict(self) -> dict[str, Any]:
        if self.source == "seed":
            return {"source": "seed", "seed": self.seed, "init": SEEDED_INIT}
        return {"source": "file", "path": self.path, "sha256": self.sha256,
                "prefix": self.prefix, "stripped": list(self.stripped),
                **({"note": self.note} if self.note else {})}

    @classmethod
    def from_dict(cls, data: Any) -> WeightSource:
        if not isinstance(data, Mapping) or data.get("source") not in ("seed", "file"):
            raise ValueError("weights must be an object with source 'seed' or 'file'")
        strings = {k: data.get(k) for k in ("path", "sha256", "prefix", "note")}
        if any(v is not None and not isinstance(v, str) for v in strings.values()):
            raise ValueError("weights path, sha256, prefix and note must be strings")
        seed = data.get("seed")
        if seed is not None and (not is_int(seed) or not 0 <= seed < 2**63):
            raise ValueError("weights seed must be a non-negative integer")
        stripped = data.get("stripped", [])
        if not isinstance(stripped, list) or not all(isinstance(s, str) for s in stripped):
            raise ValueError("weights stripped must be a list of strings")
        return cls(source=data["source"], seed=seed, stripped=tuple(stripped), **strings)

    def request(self) -> WeightsRequest:
        """The request that makes these weights again."""
        if self.source == "seed":
            return WeightsRequest(seed=self.seed or 0)
        return WeightsRequest(path=pathlib.Path(self.path or ""), prefix=self.prefix)

    def describe(self) -> str:
        if self.source == "seed":
            return f"seed {self.seed} (norms and biases randomised too)"
        extra = f", prefix {self.prefix!r}" if self.prefix else ""
        extra += f" ({self.note})" if self.note else ""
        return f"file {self.path}{extra}"
