"""What an exported ONNX graph may say about the machine that made it: nothing (torch-free).

The dynamo exporter annotates every node with where it was traced: the Python stack
(``pkg.torch.onnx.stack_trace``, absolute paths into the exporting machine's environment,
home directory included) and other source locations. :func:`scrub` keeps, of every
node's ``metadata_props``, only the keys in :data:`KEPT_NODE_PROPS`: the module scopes
(``pkg.torch.onnx.name_scopes``) that :mod:`necktool.artifact.stages` reads for ``--stages``
and ``bench --stages`` (module attribute paths such as ``td_convs.1.conv``: names from the
neck's code, never from the file system). Doc strings anywhere in the graph (nodes,
graphs, value infos, functions) are emptied; the model's own doc string and
``metadata_props`` are necktool's (:func:`necktool.deploy.export._stamp`).

An allow-list, not a deny-list: a key a future exporter adds is dropped until someone
decides it is safe to ship.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from necktool.artifact.stages import NAME_SCOPES

if TYPE_CHECKING:
    import onnx

#: The node ``metadata_props`` keys an exported file keeps.
KEPT_NODE_PROPS = frozenset({NAME_SCOPES})


def scrub(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop, in place, every node annotation but :data:`KEPT_NODE_PROPS` and every doc
    string below the model, in the main graph, its subgraphs and the model's functions;
    returns ``model``."""
    for graph in _graphs(model.graph):
        _scrub_graph(graph)
    for function in model.functions:
        function.ClearField("doc_string")
        _keep(function.metadata_props)
        for node in function.node:
            _scrub_node(node)
    return model


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph below it (an If's branches, a Loop's body)."""
    found, todo = [], [graph]
    while todo:
        current = todo.pop()
        found.append(current)
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    todo.append(attribute.g)
                todo.extend(attribute.graphs)
    return found


def _scrub_graph(graph: onnx.GraphProto) -> None:
    graph.ClearField("doc_string")
    _keep(graph.metadata_props)
    for info in (*graph.input, *graph.output, *graph.value_info):
        info.ClearField("doc_string")
        _keep(info.metadata_props)
    for tensor in graph.initializer:
        tensor.ClearField("doc_string")
        _keep(tensor.metadata_props)
    for node in graph.node:
        _scrub_node(node)


def _scrub_node(node: onnx.NodeProto) -> None:
    node.ClearField("doc_string")
    _keep(node.metadata_props)
    for attribute in node.attribute:
        attribute.ClearField("doc_string")


def _keep(props: Any) -> None:
    kept = [(p.key, p.value) for p in props if p.key in KEPT_NODE_PROPS]
    del props[:]
    for key, value in kept:
        props.add(key=key, value=value)
