"""PyTorch → `graph` dialect.

`export_model` runs `torch.export` and torch's own decompositions, keeping the ops
the graph dialect has at LLM granularity (linear, layer_norm, gelu, softmax, sdpa,
matmul); `import_graph_module` then walks the ATen FX graph node by node. The
torch.compile backend hands its Dynamo graph to the same path. Parameters and
buffers become `graph.weight` ops that name them; their values travel beside the
IR in `ImportedModel.weights`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from xdsl.dialects import builtin, func
from xdsl.ir import Block, Region, SSAValue

from llmc.dialects import graph
from llmc.dtypes import FLOAT_ELEMENTS, element_of, to_numpy
from llmc.errors import UnsupportedOpError, with_loc
from llmc.exporter_ops import OP_HANDLERS, ImportContext

KEPT_OPS = (
    torch.ops.aten.linear.default,
    torch.ops.aten.layer_norm.default,
    torch.ops.aten.gelu.default,
    torch.ops.aten.silu.default,
    torch.ops.aten.scaled_dot_product_attention.default,
    torch.ops.aten.softmax.int,
    torch.ops.aten.matmul.default,
)


@dataclass
class ImportedModel:
    """A `graph`-dialect module plus the values of the weights it names (float32 arrays; a 16-bit
    weight widened exactly, its IR type says how backends store it)."""

    module: builtin.ModuleOp
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)

    @property
    def forward(self) -> func.FuncOp:
        return next(op for op in self.module.ops if isinstance(op, func.FuncOp))

    @property
    def output_types(self) -> list[builtin.TensorType]:
        return list(self.forward.function_type.outputs.data)


def decomposition_table() -> dict:
    table = torch.export.default_decompositions()
    for op in KEPT_OPS:
        table.pop(op, None)
    return table


def export_model(model: torch.nn.Module, example_inputs: tuple) -> ImportedModel:
    """torch.export the model on its example inputs and import the result.

    Decomposition (most of export's time) runs only when the graph has an op the
    importer does not know as it stands."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), tuple(example_inputs))
        targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
        if not targets <= OP_HANDLERS.keys():
            program = program.run_decompositions(decomposition_table())
    signature = program.graph_signature
    weight_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    state = {**dict(program.named_parameters()), **dict(program.named_buffers())}
    constants = {name: program.constants[target] for name, target in signature.inputs_to_lifted_tensor_constants.items()}
    weights = {node: state[target] for node, target in weight_names.items()}
    weights.update(constants)
    names = {node: target for node, target in weight_names.items()}
    names.update({node: node for node in constants})
    return import_graph_module(program.graph_module, weights, names)


def source_loc(node: torch.fx.Node) -> str | None:
    """'file.py:LINE' of the innermost model frame in the node's stack trace."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    frames = [(f, line) for f, line in frames if "/torch/" not in f and "site-packages" not in f]
    if not frames:
        return None
    path, line = frames[-1]
    return f"{Path(path).name}:{line}"


def _tensor_type(value: torch.Tensor, what: str) -> builtin.TensorType:
    element = element_of(value.dtype)
    if element is None:
        raise UnsupportedOpError(
            f"{what} has dtype {value.dtype}; llmc supports float32, bfloat16 and float16 tensors and bool masks")
    return graph.tensor(tuple(value.shape), element)


def _is_causal_buffer(value: torch.Tensor) -> bool:
    """A buffer that is exactly tril(ones) over its last two dims (nanoGPT's `bias`)."""
    if value.dim() < 2 or any(d != 1 for d in value.shape[:-2]) or element_of(value.dtype) is None:
        return False
    square = value.reshape(value.shape[-2:]).float()
    return bool(torch.equal(square, torch.tril(torch.ones_like(square))))


def import_graph_module(
    gm: torch.fx.GraphModule, weights: dict[str, torch.Tensor], weight_names: dict[str, str]
) -> ImportedModel:
    """Import an ATen-level FX graph; placeholders in `weights` become graph.weight ops."""
    block = Block()
    ctx = ImportContext(block)
    imported = ImportedModel(builtin.ModuleOp([]))
    arg_types = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            _import_placeholder(node, ctx, imported, weights, weight_names, arg_types)
        elif node.op == "call_function":
            _import_call(node, ctx)
        elif node.op == "get_attr":
            value = getattr(gm, node.target)
            _import_weight(node, str(node.target), value, ctx, imported)
        elif node.op == "output":
            results = [ctx.value(v) for v in torch.utils._pytree.tree_leaves(node.args[0])]
            block.add_op(func.ReturnOp(*results))
            ftype = builtin.FunctionType.from_lists(arg_types, [r.type for r in results])
            imported.module.body.block.add_op(func.FuncOp("forward", ftype, Region(block)))
    imported.module.verify()
    return imported


def _import_placeholder(node, ctx, imported, weights, weight_names, arg_types) -> None:
    if node.name in weights:
        _import_weight(node, weight_names[node.name], weights[node.name], ctx, imported)
        return
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise UnsupportedOpError(f"input '{node.name}' is not a tensor ({type(value).__name__}); pass tensors only")
    typ = _tensor_type(value, f"input '{node.name}'")
    arg = ctx.block.insert_arg(typ, len(ctx.block.args))
    arg.name_hint = node.name
    arg_types.append(typ)
    imported.input_names.append(node.name)
    ctx.values[node] = arg


def _import_weight(node, name: str, value: torch.Tensor, ctx: ImportContext, imported: ImportedModel) -> None:
    value = value.detach()
    if _is_causal_buffer(value):
        op = graph.CausalMaskOp(result_types=[graph.tensor(tuple(value.shape), builtin.i1)])
        ctx.add(op, source_loc(node))
        ctx.values[node] = op.result
        ctx.causal_masks.add(op.result)
        return
    typ = _tensor_type(value, f"weight '{name}'")
    op = graph.WeightOp(name, typ)
    ctx.add(op, None)
    op.result.name_hint = re.sub(r"\W", "_", name)
    ctx.values[node] = op.result
    imported.weights[name] = to_numpy(value)


def _import_call(node: torch.fx.Node, ctx: ImportContext) -> None:
    handler = OP_HANDLERS.get(node.target)
    loc = source_loc(node)
    if handler is None:
        raise UnsupportedOpError(
            with_loc(f"llmc cannot import '{node.target}' (FX node '{node.name}')", loc)
            + "; rewrite it with supported ops or let torch.compile fall back to eager"
        )
    ctx.loc = loc
    value = node.meta.get("val")
    element = element_of(value.dtype) if isinstance(value, torch.Tensor) else None
    ctx.element = element if element in FLOAT_ELEMENTS.values() else builtin.f32
    result = handler(ctx, node, *node.args, **node.kwargs)
    ctx.values[node] = result
    if isinstance(result, SSAValue):
        result.name_hint = node.name
