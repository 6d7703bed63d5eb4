"""Which stage and output level each node of an exported neck belongs to (torch-free).

The dynamo exporter records, on every node, the module scopes it was traced in
(``pkg.torch.onnx.name_scopes``: ``['', 'td_convs.1', 'td_convs.1.conv', 'conv2d_4']``,
the root first, the op last). The innermost module path is handed to the neck's
:meth:`~necktool.necks.base.Neck.part_of`, which knows its family's stages and which
output level each of its children feeds. Nodes outside every stage (the shape
arithmetic of a dynamic export at the root) map to nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from typing import Any

NAME_SCOPES = "pkg.torch.onnx.name_scopes"

#: ``module path -> (stage, level)`` or ``None``: a neck's ``part_of``
PartOf = Callable[[str], "tuple[str, int] | None"]


def module_path(node: Any) -> str | None:
    """The innermost module path a node was traced in, or ``None`` when the node carries no
    name scopes (another exporter) or sits at the neck's root."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if not isinstance(scopes, list) or len(scopes) < 3:
                return None
            path = scopes[-2]
            return path if isinstance(path, str) and path else None
    return None


def node_parts(nodes: Iterable[Any], part_of: PartOf) -> dict[str, tuple[str, int]]:
    """``node name -> (stage, level)`` for every node whose module the neck places."""
    parts: dict[str, tuple[str, int]] = {}
    for node in nodes:
        path = module_path(node)
        part = part_of(path) if path is not None else None
        if part is not None:
            parts[node.name] = part
    return parts
