"""One Dynamo graph under torch.compile: partitioned, frozen, compiled per concrete size.

`PartitionedGraph.build` proposes partitions of the functionalized ATen graph
with torch's `CapabilityBasedPartitioner` (an op is supported when the
importer has a handler for it and llmc has its dtype) and swaps each fused
submodule for an `LlmcPartition`, which compiles it on its first call and
again for each new concrete size when the graph is symbolic.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from llmc.dtypes import element_of
from llmc.dynamo_backend import BackendStats, GraphReport, source_name, warn_once
from llmc.errors import LlmcError
from llmc.reproducer import internal_error
from llmc.exporter import import_graph_module
from llmc.exporter import OP_HANDLERS, source_loc
from llmc.folding import foldable
from llmc.options import BackendOptions

aten = torch.ops.aten


def dynamo_names(gm: torch.fx.GraphModule) -> list[str]:
    """Each Dynamo placeholder as the model names it: `input_ids`, `model.layers.0.mlp.up_proj.weight`."""
    names = []
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        keys = re.findall(r"\['([^']+)'\]", source_name(node))
        if keys:
            names.append(".".join(keys[1:] if keys[0] == "self" and len(keys) > 1 else keys))
        else:
            names.append(re.sub(r"^l_|_$", "", node.name))
    return names


class LlmcSupport(OperatorSupportBase):
    """What llmc can take: ops the importer knows, on dtypes llmc has, and anything computed from sizes
    and constants alone (it folds to a constant once the graph is specialised to concrete sizes)."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.refused: dict[str, str] = {}  # "op (line)" -> why, for the warnings and llmc.explain
        self.static: set[torch.fx.Node] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder" and (not isinstance(node.meta.get("val"), torch.Tensor) or _is_float_scalar(node)):
                self.static.add(node)
            elif node.op == "get_attr":
                self.static.add(node)
            elif all(a in self.static for a in node.all_input_nodes) and (foldable(node) or _is_number(node)):
                self.static.add(node)

    def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return False
        if node in self.static:
            return True
        if node.target is aten.copy_.default:
            return node.args[0].op == "placeholder"
        if node.target not in OP_HANDLERS:
            return self._refuse(node, "llmc has no lowering for this op")
        value = node.meta.get("val")
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, torch.Tensor) and element_of(v.dtype) is None:
                return self._refuse(node, f"llmc does not compute in {v.dtype}")
        return True

    def _refuse(self, node: torch.fx.Node, why: str) -> bool:
        loc = source_loc(node)
        self.refused[f"{node.target}" + (f" ({loc})" if loc else "")] = why
        return False


class PartitionedGraph:
    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list, params: set[int], buffers: set[int],
                 names: list[str], settings: BackendOptions, report: GraphReport, stats: BackendStats):
        self.gm = gm
        self.example_inputs = example_inputs
        self.params, self.buffers, self.names = params, buffers, names
        self.settings, self.report, self.stats = settings, report, stats

    def build(self) -> Callable:
        inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        # state the graph writes back is not a constant, wherever partitioning puts the write
        mutated = {inputs.index(n.args[0]) for n in self.gm.graph.nodes
                   if n.op == "call_function" and n.target is aten.copy_.default and n.args[0] in inputs}
        support = LlmcSupport(self.gm)
        partitioner = CapabilityBasedPartitioner(self.gm, support, allows_single_node_partition=True)
        partitions = partitioner.propose_partitions()
        for op, why in support.refused.items():
            self.report.eager_ops.append(f"{op}: {why}")
            warn_once(f"llmc: {op} runs in eager: {why}")
        if not partitions:
            return self.gm
        fused = partitioner.fuse_partitions(partitions)
        placeholders = {n: i for i, n in enumerate(n for n in fused.graph.nodes if n.op == "placeholder")}
        for node in [n for n in fused.graph.nodes if n.op == "call_module"]:
            positions = [placeholders.get(a) if isinstance(a, torch.fx.Node) else None for a in node.args]
            entry = {"name": node.target, "ops": 0, "kernels": 0, "compiles": 0}
            self.report.partitions.append(entry)
            partition = LlmcPartition(getattr(fused, node.target), positions, self, mutated, entry)
            entry["ops"] = partition.op_count
            setattr(fused, node.target, partition)
        fused.recompile()
        return fused


class LlmcPartition(torch.nn.Module):
    """A fused submodule compiled by llmc on first call; parameters baked in, guarded by identity and version."""

    def __init__(self, sub: torch.fx.GraphModule, positions: list[int | None], graph: PartitionedGraph,
                 mutated: set[int], entry: dict):
        super().__init__()
        self.sub = sub
        self.graph = graph
        self.entry = entry
        self.placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for node, position in zip(self.placeholders, positions):
            if position is not None:
                node.meta["llmc_name"] = graph.names[position]
        frozen = graph.params | (graph.buffers - mutated)
        self.frozen = {i: p for i, p in enumerate(positions) if p is not None and p in frozen}
        self.weight_slots = {i for i, p in self.frozen.items() if p in graph.params}
        out = next(n for n in sub.graph.nodes if n.op == "output").args[0]
        self.tuple_output = isinstance(out, tuple | list)
        self.op_count = sum(1 for n in sub.graph.nodes if n.op == "call_function")
        self.symbolic = any(_is_symbolic(n.meta.get("val")) for n in self.placeholders)
        # Python floats Dynamo passes as 0-d float64 tensors (dynamic=True): compiled per value, as constants
        self.scalars = {i for i, n in enumerate(self.placeholders) if _is_float_scalar(n)}
        self.cache: dict[tuple, Callable] = {}
        self.baked: dict[int, tuple[torch.Tensor, int]] = {}

    def forward(self, *args):
        if any(args[i] is not t or t._version != v for i, (t, v) in self.baked.items()):
            self.cache.clear()  # a weight was replaced or updated in place: compile against the new values
        key = self.key(args)
        run = self.cache.get(key)
        if run is None:
            run = self.cache[key] = self.compile(args, key)
        return run(args)

    def key(self, args) -> tuple:
        return tuple(float(a) if i in self.scalars else (tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args) if i not in self.frozen)

    def compile(self, args, key) -> Callable:
        settings = self.graph.settings
        if self.symbolic and len(self.cache) >= settings.max_specializations:
            warn_once(f"llmc: a symbolic graph met more than {settings.max_specializations} sizes; "
                      "further sizes run in eager (raise options={'max_specializations': N})")
            return lambda a: self.sub(*a)
        try:
            return self._compile(args)
        except Exception as error:  # never a failed torch.compile: llmc's bugs come back as InternalError
            if not isinstance(error, LlmcError):
                error = internal_error("the torch.compile backend", error)
            warn_once(f"llmc: a partition of {self.op_count} ops runs in eager: {error}")
            return lambda a: self.sub(*a)

    def _compile(self, args) -> Callable:
        from llmc.api import compile_imported

        gm = specialize(self.sub, args) if self.symbolic else self.sub
        nodes = [n for n in gm.graph.nodes if n.op == "placeholder"]
        weights, names, constants = {}, {}, {}
        for i, position in self.frozen.items():
            name = nodes[i].name
            if i in self.weight_slots:
                weights[name], names[name] = args[i], self.graph.names[position]
            else:
                constants[name] = args[i]
        constants.update({nodes[i].name: args[i] for i in self.scalars})
        imported = import_graph_module(gm, weights, names, constants)
        settings = self.graph.settings
        compiled = compile_imported(imported, settings.target, settings.passes, emit=lambda *_: None,
                                    backend=settings.backend, quantize=settings.quantize,
                                    matmul_precision=settings.matmul_precision,
                                    autotune=settings.autotune_setting())
        self.baked = {i: (args[i], args[i]._version) for i in self.frozen}
        self.graph.stats.compiles += 1
        self.entry["compiles"] += 1
        self.entry["kernels"] = sum(1 for op in compiled.module.walk() if op.name == "tile.kernel")
        return lambda a: self._run(compiled, a)

    def _run(self, compiled, args):
        user = compiled.run_flat(list(args))  # every argument of a partition is one of its inputs
        self.graph.stats.llmc_runs += 1
        return tuple(user) if self.tuple_output else user[0]


def _is_float_scalar(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float64


def _is_number(node: torch.fx.Node) -> bool:
    """Size arithmetic (operator.mul on SymInts, sym_float, ...): a number once sizes are concrete."""
    return isinstance(node.meta.get("val"), torch.SymInt | torch.SymFloat | torch.SymBool | int | float | bool)


def _is_symbolic(value) -> bool:
    if isinstance(value, torch.SymInt):
        return True
    return isinstance(value, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in value.shape)


def specialize(gm: torch.fx.GraphModule, args) -> torch.fx.GraphModule:
    """A copy of a symbolic graph for the sizes of `args`: every size expression becomes its value, every
    node's meta value a fake tensor of its concrete shape. Stack traces (model lines) are kept."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    gm = copy.deepcopy(gm)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    values: dict[torch.fx.Node, object] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            values[n] = result = super().run_node(n)
            return result

    with mode:
        Recorder(gm).run(*fakes)
    for node in list(gm.graph.nodes):
        value = values.get(node)
        node.meta["val"] = value
        if isinstance(value, bool | int | float) and node.op != "output":
            for user in list(node.users):
                user.args = torch.fx.map_arg(user.args, lambda a, n=node, v=value: v if a is n else a)
                user.kwargs = torch.fx.map_arg(user.kwargs, lambda a, n=node, v=value: v if a is n else a)
            if node.op != "placeholder":
                gm.graph.erase_node(node)
    gm.recompile()
    return gm
