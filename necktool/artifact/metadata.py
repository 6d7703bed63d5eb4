"""What an exported ONNX file says about itself, and what its graph holds (torch-free).

* :class:`ExportMetadata`: the ``necktool.*`` ``metadata_props`` an export writes (the
  version, the resolved spec, the export size and batch, the sizes the file serves, its
  precision and upsample form, the counts, the weights' origin) and reads back
  defensively: a file whose metadata is missing, of the wrong shape or too large is "not a
  necktool file, or its necktool metadata is damaged"; a file without the newer keys reads
  as what an older necktool wrote (fp32, ``size`` upsampling, serving multiples of the
  coarsest stride when dynamic).
* :func:`describe`: the graph's opset, inputs and outputs; :func:`conv_macs`: the graph's
  own conv multiply-add count, from ONNX shape inference (:func:`static_shapes`, which sees
  through ``GroupNormalization`` and Shape-fed Slices).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from necktool.artifact.serving import Served
from necktool.errors import ExportError, InputError, NecktoolError
from necktool.spec.fields import BadValue, SizeKind, describe_value, parse_int_text
from necktool.spec.graph_form import Upsample
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import MAX_CALIBRATION, Precision
from necktool.spec.weights import WeightSource
from necktool.units import UNIT, UNIT_NOTE

if TYPE_CHECKING:
    import onnx

META = "necktool."  # prefix of every metadata_props key necktool writes
MAX_META_VALUE = 64 * 1024  # bytes of one metadata value necktool will parse
MAX_META_DEPTH = 8  # nesting of the JSON inside a metadata value
#: Ops whose output has the shape of their first input, for which onnx (1.23) has no
#: shape inference: from opset 21 the exporter writes GroupNorm as one
#: ``GroupNormalization`` node, and without this every shape after it stays unknown.
SAME_SHAPE_OPS = frozenset({"GroupNormalization"})


class DamagedMetadata(InputError):
    """The file's ``necktool.*`` metadata is there but cannot be trusted."""










@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself (``metadata_props``, keys ``necktool.*``)."""

    version: str
    neck: str
    spec: NeckSpec
    input_size: tuple[int, int]
    batch: int
    dynamic: bool
    opset: int
    flops: int
    params: int
    conv_macs: int
    weights: WeightSource
    exporter: str
    precision: Precision = Precision.FP32
    served: Served | None = None  # None: what an older file serves (Served.legacy)
    calibration: int | None = None  # int8: the calibration batches
    upsample: Upsample = Upsample.SIZE  # absent in older files: size, the only form then

    @property
    def served_shapes(self) -> Served:
        """What the file serves (its record, or what an older necktool's file served)."""
        return self.served if self.served is not None else Served.legacy(self.dynamic)

    def dims_note(self) -> str:
        return self.served_shapes.dims_note(self.spec, self.input_size, self.batch)

    def serves_text(self) -> str:
        """Exactly which inputs the file serves, in one sentence."""
        return self.served_shapes.describe(self.spec, self.input_size, self.batch)

    def upsample_text(self) -> str:
        """How the file writes nearest upsampling, in one phrase."""
        if self.upsample is Upsample.SCALE2:
            return ("scale2: a constant x2 Resize, then a Slice to the finer level's size "
                    "(the same numbers as size wherever each level is ceil(finer / 2))")
        return "size: a Resize to the finer level's size, taken from its Shape"

    def to_props(self) -> dict[str, str]:
        """String key/values for ``ModelProto.metadata_props`` (JSON where structured)."""
        h, w = self.input_size
        return {
            f"{META}version": self.version,
            f"{META}neck": self.neck,
            f"{META}spec": json.dumps(self.spec.to_dict(), sort_keys=True),
            f"{META}input_size": f"{h}x{w}",
            f"{META}batch": str(self.batch),
            f"{META}dynamic": json.dumps(self.dynamic),
            f"{META}dims": self.dims_note(),
            f"{META}serves": json.dumps(self.served_shapes.to_json(), sort_keys=True),
            f"{META}serves_note": self.serves_text(),
            f"{META}precision": self.precision.value,
            **({f"{META}calibration": str(self.calibration)}
               if self.calibration is not None else {}),
            f"{META}upsample": self.upsample.value,
            f"{META}opset": str(self.opset),
            f"{META}flops": str(self.flops),
            f"{META}flops_unit": f"{UNIT} ({UNIT_NOTE}) at {h}x{w}, batch {self.batch}",
            f"{META}params": str(self.params),
            f"{META}conv_macs": str(self.conv_macs),
            f"{META}weights": json.dumps(self.weights.to_dict(), sort_keys=True),
            f"{META}exporter": self.exporter,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ExportMetadata:
        """Parse the metadata back, checking every value's type and range.

        Raises:
            DamagedMetadata: a key is missing, or a value is malformed, too large or too
                deeply nested.
        """
        reader = _Props(props)
        neck = reader.text("neck")
        raw_spec = reader.json("spec")  # a DamagedMetadata of its own: not wrapped again
        try:
            spec = NeckSpec.from_dict(raw_spec, name=neck)
        except NecktoolError as exc:
            raise reader.damaged("spec", str(exc)) from None
        try:
            weights = WeightSource.from_dict(reader.json("weights"))
        except ValueError as exc:
            raise reader.damaged("weights", str(exc)) from None
        dynamic = reader.json("dynamic")
        if not isinstance(dynamic, bool):
            raise reader.damaged("dynamic",
                                 f"expected true or false, got {describe_value(dynamic)}")
        served = None
        if f"{META}serves" in props:  # older files have none: Served.legacy(dynamic)
            try:
                served = Served.from_json(reader.json("serves"))
            except ValueError as exc:
                raise reader.damaged("serves", str(exc)) from None
            if served.dynamic != dynamic:
                raise reader.damaged("serves", f"says {served.images.value} for a "
                                     f"{'dynamic' if dynamic else 'static'} file")
        precision = reader.choice("precision", Precision, default=Precision.FP32)
        calibration = reader.integer("calibration", 1, MAX_CALIBRATION, default=0) or None
        upsample = reader.choice("upsample", Upsample, default=Upsample.SIZE)
        return cls(
            version=reader.text("version"),
            neck=neck,
            spec=spec,
            input_size=reader.size("input_size"),
            batch=reader.integer("batch", 1, 2**20),
            dynamic=dynamic,
            opset=reader.integer("opset", 1, 10_000),
            flops=reader.integer("flops", 0, 2**63),
            params=reader.integer("params", 0, 2**63),
            conv_macs=reader.integer("conv_macs", 0, 2**63, default=0),
            weights=weights,
            exporter=reader.text("exporter", default=""),
            precision=precision,
            served=served,
            calibration=calibration,
            upsample=upsample,
        )


_Choice = TypeVar("_Choice", bound=enum.StrEnum)


class _Props:
    """Typed, bounded access to ``necktool.*`` metadata values."""

    def __init__(self, props: Mapping[str, str]) -> None:
        self.props = props

    def damaged(self, key: str, why: str) -> DamagedMetadata:
        return DamagedMetadata(f"not a necktool file, or its {META}{key} is damaged: {why}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.props.get(f"{META}{key}", default)
        if value is None:
            raise self.damaged(key, "missing")
        if len(value) > MAX_META_VALUE:
            raise self.damaged(key, f"{len(value):,} characters; at most {MAX_META_VALUE:,}")
        return value

    def json(self, key: str) -> Any:
        text = self.text(key)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise self.damaged(key, f"not JSON ({type(exc).__name__})") from None
        if _depth(value) > MAX_META_DEPTH:
            raise self.damaged(key, f"JSON nested deeper than {MAX_META_DEPTH} levels")
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        raw = self.props.get(f"{META}{key}")
        if raw is None and default is not None:
            return default
        text = self.text(key)
        try:
            value = parse_int_text(text, f"an integer from {low} to {high}")
        except BadValue as exc:
            raise self.damaged(key, exc.message(repr(text[:40]))) from None
        if not low <= value <= high:
            raise self.damaged(key, f"{value} is outside {low} to {high}")
        return value

    def choice(self, key: str, kind: type[_Choice], default: _Choice) -> _Choice:
        """One of ``kind``'s values; ``default`` where the key is absent (older files)."""
        text = self.text(key, default=default.value)
        try:
            return kind(text)
        except ValueError:
            raise self.damaged(key, f"{text[:40]!r} is not one of "
                               f"{', '.join(kind)}") from None

    def size(self, key: str) -> tuple[int, int]:
        text = self.text(key)
        try:
            return SizeKind().from_text(text)
        except BadValue as exc:
            raise self.damaged(key, exc.message(repr(text[:40]))) from None


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_META_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def load_model(path: str, what: str = "ONNX file") -> onnx.ModelProto:
    """Load an ONNX file's graph (never external data).

    Raises:
        InputError: missing, unreadable or not an ONNX model.
    """
    import onnx  # ~0.2 s: only where a graph is read

    try:
        return onnx.load(path, load_external_data=False)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path!r}: {(exc.strerror or str(exc)).lower()}") \
            from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path!r} is not an ONNX model: {type(exc).__name__}") from None


def read_metadata(model: onnx.ModelProto | str | os.PathLike[str], *,
                  path: str | os.PathLike[str] | None = None) -> ExportMetadata | None:
    """The necktool metadata of a model or file, or ``None`` if necktool did not write it.

    ``path`` names the file in an error when ``model`` is already loaded.

    Raises:
        DamagedMetadata: the file says it is necktool's but its metadata is malformed (the
            message names the file).
    """
    if isinstance(model, (str, os.PathLike)):
        path = model
        proto = load_model(os.fspath(model))
    else:
        proto = model
    props = {p.key: p.value for p in proto.metadata_props}
    if not any(k.startswith(META) for k in props):
        return None
    try:
        meta = ExportMetadata.from_props(props)
        # Build flags such as input_size live in the spec; keep the export size
        # authoritative.
        try:
            spec = meta.spec.replace(input_size=meta.input_size)
        except NecktoolError as exc:
            raise DamagedMetadata(f"not a necktool file, or its {META}input_size is damaged: "
                                  f"{exc}") from None
    except DamagedMetadata as exc:
        if path is None:
            raise
        raise DamagedMetadata(f"{os.fspath(path)}: {exc}") from None
    return dataclasses.replace(meta, spec=spec)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """An ONNX graph input or output: name, shape (ints or symbolic names), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(map(str, self.shape))})"


def tensor_infos(values: Any) -> tuple[TensorInfo, ...]:
    import onnx

    infos = []
    for v in values:
        tt = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tt.shape.dim)
        infos.append(TensorInfo(v.name, shape, onnx.TensorProto.DataType.Name(tt.elem_type)
                                .lower()))
    return tuple(infos)


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    """The default-domain opset and the graph's inputs and outputs."""

    opset: int | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def dynamic(self) -> bool:
        """Whether any input dimension is symbolic or unknown."""
        return any(not isinstance(d, int) for t in self.inputs for d in t.shape)


def graph_precision(model: onnx.ModelProto) -> Precision:
    """What a graph computes in: int8 when it has QuantizeLinear nodes, fp16 when its
    floating-point weights are float16, else fp32."""
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return Precision.INT8
    kinds = {i.data_type for i in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds:
        return Precision.FP16
    return Precision.FP32


def describe(model: onnx.ModelProto) -> GraphInfo:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return GraphInfo(opset, tensor_infos(model.graph.input), tensor_infos(model.graph.output))


def conv_macs(model: onnx.ModelProto, input_shapes: Mapping[str, list[int]]) -> int:
    """Conv multiply-adds of the graph at the given input shapes, from shape inference.

    Each Conv contributes ``N * Cout * Hout * Wout * (Cin / groups) * kh * kw``: the
    output's element count times the weight's per-output-channel size (shapes from
    :func:`static_shapes`).

    Raises:
        ExportError: a Conv's output or weight shape cannot be inferred.
    """
    shapes = static_shapes(model, input_shapes)
    total = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight:
            raise ExportError(f"shape inference left Conv {node.name or node.output[0]!r} "
                              "without a static shape; cannot count its MACs")
        total += math.prod(out) * math.prod(weight[1:])
    return total


def static_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, list[int]]
                  ) -> dict[str, list[int] | None]:
    """Every value's shape at the given input shapes (``None`` where it stays unknown),
    from ONNX shape inference with data propagation on a copy of the graph.

    Two things onnx (1.23) cannot see through are made visible in the copy, without
    changing any shape:

    * an op of :data:`SAME_SHAPE_OPS` (its output has its first input's shape, but onnx
      has no shape inference for it) becomes an ``Identity`` of its first input;
    * a ``Shape`` of a tensor whose shape is known becomes a ``Constant``: a Slice whose
      ``ends`` come from a Shape op (``--upsample scale2``'s crop to the finer level) gets
      no output shape from propagated data, only from constants. Inference runs again
      while a pass folds a ``Shape`` (a shape may become known only after one is folded).
    """
    import onnx
    from onnx import helper, shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, input_shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    # Drop the exporter's symbolic annotations so inference recomputes every shape.
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    for node in fixed.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in SAME_SHAPE_OPS:
            data = node.input[0]
            del node.input[:]
            del node.attribute[:]
            node.input.append(data)
            node.op_type = "Identity"
    while True:
        inferred = shape_inference.infer_shapes(fixed, data_prop=True)
        shapes: dict[str, list[int] | None] = {}
        for value in [*inferred.graph.value_info, *inferred.graph.output,
                      *inferred.graph.input]:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [d.dim_value for d in dims] \
                if all(d.HasField("dim_value") for d in dims) else None
        for init in inferred.graph.initializer:
            shapes[init.name] = list(init.dims)
        folded = False
        for node in fixed.graph.node:
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") \
                    or shapes.get(node.input[0]) is None:
                continue
            attrs = {a.name: a.i for a in node.attribute}
            # ONNX's start/end: negative counts from the end, both clamped: Python's slicing.
            dims = (shapes[node.input[0]] or [])[attrs.get("start", 0):attrs.get("end")]
            value = helper.make_tensor(node.output[0], onnx.TensorProto.INT64, [len(dims)],
                                       dims)
            node.CopyFrom(helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                           value=value))
            folded = True
        if not folded:
            return shapes
