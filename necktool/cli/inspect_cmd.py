"""``necktool inspect``: which neck a checkpoint or an exported ONNX file holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.params import PATH
from necktool.cli.render import load_heavy

if TYPE_CHECKING:
    from necktool.detector.identify import InspectResult
    from necktool.detector.inspect import DetectorInspect

FileArg = Annotated[Any, typer.Argument(
    metavar="FILE", show_default=False, parser=PATH,
    help="A .pt/.pth checkpoint (a state dict, an mmdetection/mmengine checkpoint, a "
    "Pytorch_Retinaface file), an ONNX file written by 'necktool export', or any detector "
    "ONNX file (SCRFD's det_*.onnx, a RetinaFace export): its neck is found by the graph's "
    "structure.")]
PrefixOpt = Annotated[str | None, typer.Option(
    "--prefix", metavar="PREFIX", show_default=False,
    help="Look for the neck only under this key prefix (e.g. 'neck.'). Default: anywhere.")]


def inspect_command(file: FileArg, prefix: PrefixOpt = None) -> InspectResult | DetectorInspect:
    """Find the neck in a checkpoint or ONNX file: family, channels, levels, presets.

    A checkpoint is read with torch.load(weights_only=True); the neck is found by its key
    layout under any prefix (neck., fpn., module.fpn., none) and its spec read off the
    tensor shapes. Prints the presets whose neck holds exactly those tensors and the
    command that reproduces it. Exit 2 if the file holds no neck necktool recognises.

    An ONNX file necktool did not write is read as a detector (torch is not imported): the
    neck's family, channels, levels, norm (present, folded or none), the tensors entering
    and leaving it, and its conv MACs and parameters as a share of the whole graph's.
    """
    if prefix is None and str(file).lower().endswith(".onnx"):
        from necktool.detector.inspect import inspect_detector

        found = inspect_detector(file)
        if found is not None:
            return found
    load_heavy()
    from necktool.detector.identify import inspect_file

    return inspect_file(file, prefix)
