"""fp16 and int8 versions of an exported fp32 graph, made in memory (no torch here but
:func:`necktool.necks.build.make_inputs` for the calibration batches).

* ``fp16``: ONNX Runtime's converter (``onnxruntime.transformers.float16``) with
  ``keep_io_types=True``: weights and compute in float16, inputs and outputs float32, so
  the file is a drop-in. The converter appends the input Casts at the end of the node
  list; the graph is then sorted topologically, which ``onnx.checker`` requires.
* ``int8``: ONNX Runtime's static quantization in QDQ format (int8 activations and
  weights, per-tensor, weights in a 7-bit range (:data:`REDUCE_RANGE`), MinMax
  calibration), calibrated on ``calibration`` seeded batches
  drawn as verification draws its inputs (standard normal, one seed per batch; seeds of
  their own, so verification runs on inputs the calibration never saw), cycling through
  the given ``(size, batch)`` shapes (:func:`necktool.artifact.serving.calibration_shapes`).

Before quantizing, every initializer that several nodes share gets one copy per
consumer: the dynamo exporter's optimiser shares the ``InstanceNormalization`` scale and
bias constants between all GroupNorms, and ONNX Runtime's quantizer renames the copies it
makes in a way that collides with activation names (``val_29`` + ``0`` = ``val_290``),
silently corrupting the graph.

Neither converter may talk to the user: their ``logging`` records, prints and C-level
output are captured; ONNX Runtime's quantizer logs on the root logger, which would
install a permanent handler there (``logging.basicConfig``), so the root handlers are
restored afterwards; its temporary directories go into a private one, removed at once.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from necktool.errors import ExportError, first_line
from necktool.quiet import quiet
from necktool.spec.precision import (
    DEFAULT_CALIBRATION,
    CalibrationMethod,
    Precision,
)

if TYPE_CHECKING:
    import onnx

    from necktool.spec.neck_spec import NeckSpec

CALIBRATION_SEED = 5000  # batch i of the calibration uses seed 5000 + i

#: int8 weights use 7 bits of their range (ONNX Runtime's ``reduce_range``). On x86-64
#: CPUs without VNNI, ONNX Runtime runs a fused int8 Conv through u8s8 kernels
#: (``VPMADDUBSW``) whose 16-bit intermediate sums saturate; with full-range weights that
#: cost a neck's coarsest output up to 18 dB of SQNR here (insightface_scrfd_500m's p5:
#: 12.1 dB fused against 30.3 dB unfused) while 7-bit weights cost about 1 dB and make
#: the fused and unfused results equal. A file must hold on every CPU it is deployed on.
REDUCE_RANGE = True


Shape = tuple[tuple[int, int], int]  # ((H, W), batch) of calibration inputs
Feeds = dict[str, Any]  # input name -> float32 array: one calibration batch

#: int8 weights per output channel. Measured (scripts/calibration_table.py): see
#: docs/how-to/real-data.md, "Measured".
PER_CHANNEL = True


def convert(proto: onnx.ModelProto, precision: Precision, *, spec: NeckSpec,
            shapes: Sequence[Shape], calibration: int = DEFAULT_CALIBRATION,
            feeds: Sequence[Feeds] | None = None,
            method: CalibrationMethod = CalibrationMethod.MINMAX,
            per_channel: bool = PER_CHANNEL, keep_fp32: Sequence[str] = ()
            ) -> onnx.ModelProto:
    """``proto`` (fp32, left unchanged) at ``precision``; fp32 returns it as it is.
    ``shapes`` and ``calibration``: the int8 calibration batches (see :func:`to_int8`);
    ``feeds``: real calibration inputs instead; ``keep_fp32``: node names left in fp32.

    ``precision``, ``calibration`` and ``method`` come from a checked plan.

    Raises:
        ExportError: the converter failed or made a graph that does not load.
    """
    if precision is Precision.FP32:
        return proto
    if precision is Precision.FP16:
        return to_fp16(proto, keep_fp32)
    return to_int8(proto, spec, shapes, calibration, feeds=feeds, method=method,
                   per_channel=per_channel, keep_fp32=keep_fp32)


def to_fp16(proto: onnx.ModelProto, keep_fp32: Sequence[str] = ()) -> onnx.ModelProto:
    """Weights and compute in float16, float32 inputs and outputs (see the module doc);
    the nodes named in ``keep_fp32`` stay float32 (the converter's ``node_block_list``)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    # The exporter annotates initializers in value_info too; for one that must stay float32
    # (Resize's constant scales, --upsample scale2) the converter keeps the data float32
    # but flips its value_info to float16, which onnx.checker then rejects. The
    # annotations are redundant (an initializer states its own type and shape).
    initializers = {i.name for i in copy.graph.initializer}
    annotations = [v for v in copy.graph.value_info if v.name not in initializers]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(annotations)
    if keep_fp32:  # a constant shared with an fp16 node would be rounded to fp16 for both
        unshare_initializers(copy)
    with _silenced():
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            half = convert_float_to_float16(copy, keep_io_types=True,
                                            node_block_list=list(keep_fp32) or None)
        except Exception as exc:  # the converter raises plain Exceptions
            raise ExportError(f"the fp16 conversion failed: {first_line(exc)}") from None
    return _sorted(half)


def _sorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_ir

    model = onnx_ir.from_proto(proto)
    model.graph.sort()
    return onnx_ir.to_proto(model)


def to_int8(proto: onnx.ModelProto, spec: NeckSpec, shapes: Sequence[Shape],
            calibration: int = DEFAULT_CALIBRATION, *, feeds: Sequence[Feeds] | None = None,
            method: CalibrationMethod = CalibrationMethod.MINMAX,
            per_channel: bool = PER_CHANNEL, keep_fp32: Sequence[str] = ()
            ) -> onnx.ModelProto:
    """ONNX Runtime static QDQ quantization, calibrated on ``feeds`` (real inputs) or on
    ``calibration`` seeded batches: batch ``i`` has shape ``shapes[i % len(shapes)]`` and
    seed ``CALIBRATION_SEED + i``. Nodes named in ``keep_fp32`` are not quantized
    (``nodes_to_exclude``).

    The calibrator sees one batch per ``collect_data`` call (ONNX Runtime's
    ``CalibStridedMinMax`` option with a stride of 1, which its histogram calibrators honour
    too): they stack the batches of one call into one array, which fails ("inhomogeneous
    shape") when the batches differ in size, and merge their histograms across calls.
    """
    import onnx

    if method is CalibrationMethod.AUTO:
        raise ExportError("calibration method 'auto' is chosen by necktool.deploy.precision.loss; "
                          "to_int8 takes minmax, percentile or entropy")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    unshare_initializers(copy)
    reader_cls = _reader_class()
    batches = _Batches(spec, list(shapes), calibration, feeds)
    with _silenced() as private:
        from onnxruntime.quantization import CalibrationMethod as OrtMethod
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        ort_method = {CalibrationMethod.MINMAX: OrtMethod.MinMax,
                      CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
                      CalibrationMethod.ENTROPY: OrtMethod.Entropy}[method]
        out = pathlib.Path(private) / "int8.onnx"
        try:
            quantize_static(copy, out, reader_cls(batches),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=per_channel,
                            reduce_range=REDUCE_RANGE, calibrate_method=ort_method,
                            nodes_to_exclude=list(keep_fp32) or None,
                            extra_options={"CalibStridedMinMax": 1})
            return onnx.load(str(out))
        except Exception as exc:  # ORT's quantizer raises many error types
            raise ExportError(f"the int8 quantization failed: {first_line(exc)}") from None


def unshare_initializers(proto: onnx.ModelProto) -> int:
    """Give every node input that reads an initializer already read elsewhere its own,
    uniquely named copy (see the module doc). Returns the number of copies made."""
    inits = {i.name: i for i in proto.graph.initializer}
    taken = set(inits) | {o for n in proto.graph.node for o in n.output} \
        | {v.name for v in proto.graph.input}
    seen: set[str] = set()
    copies = 0
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            n = 1
            while f"{name}__necktool{n}" in taken:
                n += 1
            fresh = f"{name}__necktool{n}"
            taken.add(fresh)
            dup = proto.graph.initializer.add()
            dup.CopyFrom(inits[name])
            dup.name = fresh
            node.input[k] = fresh
            copies += 1
    return copies


class _Batches:
    """The calibration batches: the given feeds, or seeded normal ones made on demand."""

    def __init__(self, spec: NeckSpec, shapes: list[Shape], count: int,
                 feeds: Sequence[Feeds] | None) -> None:
        self.spec, self.shapes, self.feeds = spec, shapes, list(feeds) if feeds else None
        self.count = len(self.feeds) if self.feeds is not None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Feeds:
        if self.feeds is not None:
            return self.feeds[i]
        from necktool.necks.build import make_inputs

        size, batch = self.shapes[i % len(self.shapes)]
        inputs = make_inputs(self.spec, size, batch, seed=CALIBRATION_SEED + i)
        return {n: t.numpy() for n, t in zip(self.spec.input_names, inputs, strict=True)}


def _reader_class() -> Any:
    """A ``CalibrationDataReader`` over :class:`_Batches` with ``set_range`` (for
    ``CalibStridedMinMax``); made here: ORT is imported late."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self, batches: _Batches) -> None:
            self.batches = batches
            self.start, self.end = 0, len(batches)
            self.index = 0

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = start_index, min(end_index, len(self.batches))
            self.index = self.start

        def get_next(self) -> dict[str, Any] | None:
            if self.index >= self.end:
                return None
            self.index += 1
            return self.batches[self.index - 1]

        def rewind(self) -> None:
            self.index = self.start

    return Batches


@contextlib.contextmanager
def _silenced() -> Iterator[str]:
    """:func:`necktool.quiet.quiet`, plus the root logger's handlers and level restored
    and ``tempfile``'s default directory pointed at a private one (yielded), removed on
    the way out."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="necktool-convert-") as private:
        tempfile.tempdir = private
        try:
            with quiet():
                yield private
        finally:
            tempfile.tempdir = previous
            root.handlers[:] = handlers
            root.setLevel(level)

