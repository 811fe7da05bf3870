"""PyTorch → `graph` dialect.

`export_model` runs `torch.export` (and torch's own decompositions, only when
the graph has an op the importer does not know as exported); the torch.compile
backend hands its functionalized ATen graph to the same `import_graph_module`.

The importer first folds every node that does not depend on a runtime input
(`folding.py`): masks built from `arange`/`triu`, RoPE tables, positions of a
static shape are evaluated once by torch and enter the IR as a causal mask, a
splat constant or a named constant buffer. Parameters become `graph.weight`
ops that name them; their values travel beside the IR in
`ImportedModel.weights`.

State is explicit: a buffer the model mutates (a running sum, a KV cache) and
a user input it mutates are function arguments bound to the caller's tensors,
and their new values are function results that the caller writes back
(`ImportedModel.writebacks`), so a compiled model updates the same storage
eager would, call after call.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.export.graph_signature import InputKind, OutputKind
from xdsl.dialects import builtin, func
from xdsl.ir import Block, Region, SSAValue
from xdsl.transforms.dead_code_elimination import region_dce

import llmc.exporter_views  # noqa: F401 - registers the view and indexing handlers
import llmc.exporter_writes  # noqa: F401 - registers index_copy and index_put
from llmc.dialects import graph
from llmc.dtypes import element_of
from llmc.errors import LlmcError, ModelError, UnsupportedOpError, with_loc
import llmc.exporter_ops  # noqa: F401 - registers the arithmetic, contraction and reduction handlers
from llmc.import_context import OP_HANDLERS, ImportContext, source_loc, tensor_type
from llmc.folding import fold_constants

KEPT_OPS = (
    torch.ops.aten.linear.default,
    torch.ops.aten.layer_norm.default,
    torch.ops.aten.gelu.default,
    torch.ops.aten.silu.default,
    torch.ops.aten.scaled_dot_product_attention.default,
    torch.ops.aten.softmax.int,
    torch.ops.aten.matmul.default,
)
WRAPPERS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")  # higher-order ops that only scope a submodule


@dataclass(frozen=True)
class Source:
    """Where a function argument comes from, or where a result is written back to: a user input
    (`index` into the flattened inputs) or a buffer of the model (`name`)."""

    kind: str  # "input" or "buffer"
    index: int = -1
    name: str = ""


@dataclass
class ImportedModel:
    """A `graph`-dialect module plus the values of the weights it names (float32 arrays for float
    weights, a 16-bit weight widened exactly; integers and masks as they are)."""

    module: builtin.ModuleOp
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    arguments: list[Source] = field(default_factory=list)  # one per function argument
    user_outputs: list[int] = field(default_factory=list)  # function results the model returns, in order
    writebacks: list[tuple[int, Source]] = field(default_factory=list)  # (function result, mutated tensor)
    in_spec: object = None  # pytree specs of the model's inputs and outputs (export path)
    out_spec: object = None

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


def split_inputs(example_inputs) -> tuple[tuple, dict]:
    """Example inputs as (args, kwargs): a tuple of tensors, or a dict of keyword arguments. A lone tensor
    is one positional input (taken as a sequence it would be unpacked along its first dimension and the
    model compiled for the wrong shapes)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    return tuple(example_inputs), {}


def trace_model(model: torch.nn.Module, example_inputs):
    if "transformers" in sys.modules:  # HF models return a DynamicCache: let export flatten it
        try:
            from transformers.integrations.executorch import register_dynamic_cache_export_support

            register_dynamic_cache_export_support()
        except Exception:  # an older or newer transformers without it: export reports what it cannot take
            pass
    args, kwargs = split_inputs(example_inputs)
    try:
        return torch.export.export(model.eval(), args, kwargs)
    except LlmcError:
        raise
    except Exception as error:
        eager = _eager_failure(model, args, kwargs)
        if eager is not None:  # the model's own bug, not a limit of export or llmc
            raise ModelError(f"the model's forward fails in eager PyTorch too{_user_line(eager)}: "
                             f"{_first_line(eager)}") from None
        raise UnsupportedOpError(f"torch.export could not trace the model{_user_line(error)}: "
                                 f"{_first_line(error)}") from None


def _eager_failure(model: torch.nn.Module, args, kwargs) -> Exception | None:
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as error:
        return error
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {next((line for line in text if line.strip()), '')[:400]}"


def _user_line(error: Exception) -> str:
    """' (at model.py:12)': the innermost frame of the user's code, not torch's or llmc's."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', "".join(traceback.format_tb(error.__traceback__)))
    own = str(Path(__file__).resolve().parents[1])  # llmc's own frames: the repository's folders
    user = [f"{Path(f).name}:{line}" for f, line in frames if "/torch/" not in f and not f.startswith(own)]
    return f" (at {user[-1]})" if user else ""


def export_model(model: torch.nn.Module, example_inputs) -> ImportedModel:
    """torch.export the model on its example inputs (a tuple, or a dict of keyword arguments)
    and import the result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = trace_model(model, example_inputs)
        unknown = _targets(program.graph_module) - OP_HANDLERS.keys()
        if unknown or _writes_inputs(program.graph_module):  # decompose, and functionalize state updates
            program = _decomposed(program, unknown)
        inline_wrappers(program.graph_module)
    signature = program.graph_signature
    mutated = {spec.target for spec in signature.output_specs
               if spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.USER_INPUT_MUTATION)}
    state = {**dict(program.named_parameters()), **dict(program.named_buffers())}
    weights, constants, names, sources = {}, {}, {}, {}
    user_index = 0
    for spec in signature.input_specs:
        node_name = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            weights[node_name], names[node_name] = state[spec.target], spec.target
        elif spec.kind == InputKind.BUFFER and spec.target not in mutated:
            constants[node_name] = state[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            constants[node_name] = program.constants[spec.target]
        elif spec.kind == InputKind.BUFFER:
            sources[node_name] = Source("buffer", name=spec.target)
        elif spec.kind == InputKind.USER_INPUT:
            sources[node_name] = Source("input", index=user_index)
            user_index += 1
        else:
            raise UnsupportedOpError(f"llmc cannot take the model input '{node_name}' ({spec.kind.name})")
    imported = import_graph_module(program.graph_module, weights, names, constants, sources)
    _classify_outputs(imported, signature, sources)
    mark_writebacks(imported)
    imported.in_spec, imported.out_spec = program.call_spec.in_spec, program.call_spec.out_spec
    return imported


def _writes_inputs(gm: torch.fx.GraphModule) -> bool:
    """Whether an op writes in place into a graph input (a buffer or user input the model mutates)."""
    return any(node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
               and node.target._schema.is_mutable and node.args and getattr(node.args[0], "op", None) == "placeholder"
               for node in gm.graph.nodes)


def _decomposed(program, unknown: set):
    try:
        return program.run_decompositions(decomposition_table())
    except Exception as error:  # torch's own failure: say which ops needed it
        names = ", ".join(sorted(map(str, unknown))) or "in-place updates of the model's state"
        raise UnsupportedOpError(f"torch could not decompose the exported program ({names}): "
                                 f"{type(error).__name__}: {str(error)[:300]}") from None


def _targets(gm: torch.fx.GraphModule) -> set:
    """The ops a graph calls, looking inside the submodules of scoping wrappers."""
    found = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") not in WRAPPERS:
            found.add(node.target)
        elif node.op == "get_attr" and isinstance(getattr(gm, node.target, None), torch.fx.GraphModule):
            found |= _targets(getattr(gm, node.target))
    return found


def _classify_outputs(imported: ImportedModel, signature, sources: dict[str, Source]) -> None:
    """torch.export lists mutated buffers and inputs first among the graph's outputs."""
    by_target = {s.name: s for s in sources.values() if s.kind == "buffer"}
    inputs_by_name = {name: s for name, s in sources.items() if s.kind == "input"}
    imported.user_outputs, imported.writebacks = [], []
    for index, spec in enumerate(signature.output_specs):
        if spec.kind == OutputKind.USER_OUTPUT:
            imported.user_outputs.append(index)
        elif spec.kind == OutputKind.BUFFER_MUTATION:
            imported.writebacks.append((index, by_target[spec.target]))
        elif spec.kind == OutputKind.USER_INPUT_MUTATION:
            imported.writebacks.append((index, inputs_by_name[spec.target]))
        else:
            raise UnsupportedOpError(f"llmc cannot return the model output '{spec.arg}' ({spec.kind.name})")


def inline_wrappers(gm: torch.fx.GraphModule) -> None:
    """Replace higher-order ops that only scope a submodule (no_grad / autocast regions, which have
    no effect on an inference graph) by the submodule's nodes."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or getattr(node.target, "__name__", "") not in WRAPPERS:
            continue
        position = next(i for i, a in enumerate(node.args)
                        if isinstance(a, torch.fx.Node) and a.op == "get_attr"
                        and isinstance(getattr(gm, a.target, None), torch.fx.GraphModule))
        sub = getattr(gm, node.args[position].target)
        env = dict(zip([n for n in sub.graph.nodes if n.op == "placeholder"], node.args[position + 1 :]))
        outputs = []
        with gm.graph.inserting_before(node):
            for inner in sub.graph.nodes:
                if inner.op == "output":
                    outputs = torch.fx.map_arg(inner.args[0], env.__getitem__)
                elif inner.op != "placeholder":
                    env[inner] = gm.graph.node_copy(inner, env.__getitem__)
        for user in list(node.users):
            user.replace_all_uses_with(outputs[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def import_graph_module(
    gm: torch.fx.GraphModule,
    weights: dict[str, torch.Tensor],
    weight_names: dict[str, str],
    constants: dict[str, torch.Tensor] | None = None,
    sources: dict[str, Source] | None = None,
) -> ImportedModel:
    """Import an ATen-level FX graph. Placeholders in `weights` become graph.weight ops, those in
    `constants` fold; the rest are function arguments (`sources` says what each is bound to,
    by default the placeholder's position). `aten.copy_` into a placeholder is a write-back."""
    try:
        return _import(gm, weights, weight_names, constants, sources)
    except LlmcError:
        raise
    except Exception as error:
        from llmc.reproducer import importer_reproducer

        raise importer_reproducer(error, gm, {**weights, **(constants or {})}) from error


def _import(gm, weights, weight_names, constants, sources) -> ImportedModel:
    constants = dict(constants or {})
    for node in gm.graph.nodes:
        if node.op == "get_attr" and isinstance(getattr(gm, node.target, None), torch.Tensor):
            constants[node.name] = getattr(gm, node.target)
    folded = fold_constants(gm, constants)
    block = Block()
    imported = ImportedModel(builtin.ModuleOp([]))
    ctx = ImportContext(block, folded=folded, weights=imported.weights)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources = sources or {n.name: Source("input", index=i) for i, n in enumerate(placeholders)}
    writebacks: list[tuple[SSAValue, Source]] = []
    for node in gm.graph.nodes:
        if node in folded:
            continue
        if node.op == "placeholder":
            _import_placeholder(node, ctx, imported, weights, weight_names, sources)
        elif node.op == "call_function" and node.target is torch.ops.aten.copy_.default:
            writebacks.append(_import_copy(node, ctx, sources))
        elif node.op == "call_function":
            _import_call(node, ctx)
        elif node.op == "output":
            results = [ctx.value(v) for v in torch.utils._pytree.tree_leaves(node.args[0])]
            _finish(block, imported, results, writebacks)
    imported.module.verify()
    return imported


def mark_writebacks(imported: ImportedModel) -> None:
    """State the function's contract in the IR: `llmc.writes_back = [r0, a0, ...]` says that the
    caller copies result r into argument a after the call. `fuse` may then write r in place."""
    pairs = []
    for result, target in imported.writebacks:
        if target in imported.arguments:
            pairs += [result, imported.arguments.index(target)]
    forward = imported.forward
    if pairs:
        forward.attributes[graph.WRITES_BACK] = graph.dense(pairs)
    else:
        forward.attributes.pop(graph.WRITES_BACK, None)


def _finish(block: Block, imported: ImportedModel, results: list[SSAValue], writebacks) -> None:
    imported.user_outputs = list(range(len(results)))
    imported.writebacks = [(len(results) + i, target) for i, (_, target) in enumerate(writebacks)]
    values = results + [v for v, _ in writebacks]
    block.add_op(func.ReturnOp(*values))
    ftype = builtin.FunctionType.from_lists([a.type for a in block.args], [r.type for r in values])
    forward = func.FuncOp("forward", ftype, Region(block))
    imported.module.body.block.add_op(forward)
    mark_writebacks(imported)
    region_dce(forward.body)  # folding leftovers and weights nobody reads; then drop their values
    named = {op.weight_name.data for op in block.ops if isinstance(op, graph.WeightOp)}
    for name in [n for n in imported.weights if n not in named]:
        del imported.weights[name]


def _import_copy(node: torch.fx.Node, ctx: ImportContext, sources: dict[str, Source]) -> tuple[SSAValue, Source]:
    target, value = node.args[0], node.args[1]
    if not isinstance(target, torch.fx.Node) or target.op != "placeholder" or target.name not in sources:
        raise UnsupportedOpError(with_loc("llmc cannot import an in-place copy into an intermediate tensor",
                                          source_loc(node)))
    ctx.loc = source_loc(node)
    new = ctx.cast(ctx.value(value), ctx.values[target].type.element_type)
    new = ctx.broadcast_to(new, graph.shape_of(ctx.values[target]))
    ctx.values[node] = new
    return new, sources[target.name]


def _import_placeholder(node, ctx, imported, weights, weight_names, sources) -> None:
    if node.name in weights:
        ctx.values[node] = ctx.weight(weight_names[node.name], weights[node.name])
        return
    value = node.meta.get("val")
    name = display_name(node)
    if isinstance(value, bool | int | float):
        return  # a size or scalar the graph was specialised for: its uses already hold the value
    if not isinstance(value, torch.Tensor):
        raise UnsupportedOpError(f"input '{name}' is not a tensor ({type(value).__name__}); pass tensors only")
    typ = tensor_type(value, f"input '{name}'")
    arg = ctx.block.insert_arg(typ, len(ctx.block.args))
    arg.name_hint = re.sub(r"\W", "_", name)
    imported.input_names.append(name)
    imported.arguments.append(sources[node.name])
    ctx.values[node] = arg


def display_name(node: torch.fx.Node) -> str:
    """An input's name as the model spells it (Dynamo's `l_input_ids_` is `input_ids`)."""
    return node.meta.get("llmc_name") or node.name


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
    if isinstance(value, (tuple, list)):  # several results (SDPA's output and logsumexp): the first one's type
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    element = element_of(value.dtype) if isinstance(value, torch.Tensor) else None
    if isinstance(value, torch.Tensor) and element is None:
        raise UnsupportedOpError(with_loc(f"'{node.target}' (FX node '{node.name}') computes in {value.dtype}; llmc "
                                          "computes in float32, bfloat16, float16, int64, int32 and bool", loc))
    ctx.element = element or builtin.f32
    try:
        result = handler(ctx, node, *node.args, **node.kwargs)
    except LlmcError:
        raise
    except Exception as error:  # a handler meeting a form of the op it does not take
        raise UnsupportedOpError(with_loc(f"llmc cannot import '{node.target}' (FX node '{node.name}') with "
                                          f"these arguments: {type(error).__name__}: {error}", loc)) from None
    ctx.values[node] = result
    if isinstance(result, SSAValue):
        result.name_hint = node.name

