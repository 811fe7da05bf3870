"""Carry out a Partition: rebuild the function as a sequence of kernel.kernel ops.

Each group becomes a kernel whose region holds clones of its ops, the view
chains feeding them, and the constants they read. A kernel yields "outputs":
an in-group value, possibly seen through views. Where a consumer's view chain
is not a strided view of the buffer (a permute then a reshape, say), the
producing kernel also writes the permuted layout (its store absorbs the
permute), or, when the root is an input or weight, a copy kernel writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from xdsl.dialects import func
from xdsl.dialects.builtin import StringAttr
from xdsl.ir import Block, Operation, Region, SSAValue

from llmc.dialects import graph, kernel
from llmc.passes.fusion.partition import Group, Partition
from llmc.passes.fusion.views import apply_views, store_view, view_chain

CLONED_SOURCES = (graph.ConstantOp, graph.CausalMaskOp, graph.IotaOp, graph.DequantizeOp)
INVERTIBLE_VIEWS = (graph.PermuteOp, graph.ReshapeOp)


@dataclass(frozen=True)
class Output:
    """A value a kernel writes: `base` seen through `views` (root first)."""

    base: SSAValue
    views: tuple[Operation, ...] = ()


@dataclass
class KernelPlan:
    group: Group
    outputs: list[Output] = field(default_factory=list)


def cut_points(root: SSAValue, chain: list[Operation]) -> list[int]:
    """Where a view chain must be materialised: each cut k makes chain[:k] a contiguous buffer,
    and the views from one cut to the next are strided on it (repeat_kv's expand + reshape needs one)."""
    cuts, start, shape = [], 0, graph.shape_of(root)
    while start < len(chain):
        for i in range(start, len(chain)):
            if apply_views(shape, chain[start : i + 1]) is None:
                if i == start:  # a view that needs a copy of its own operand
                    return cuts
                cuts.append(i)
                shape, start = graph.shape_of(chain[i - 1].result), i
                break
        else:
            break
    return cuts


class KernelBuilder:
    def __init__(self, func_op: func.FuncOp, partition: Partition):
        self.func_op = func_op
        self.partition = partition
        self.returned = list(func_op.body.block.last_op.operands)
        self.plans = {g.gid: KernelPlan(g) for g in partition.groups}
        self.copies: list[KernelPlan] = []
        self.results: dict[Output, SSAValue] = {}

    def output_for(self, root: SSAValue, views: tuple[Operation, ...]) -> Output:
        """Register that someone reads `views(root)` as a buffer of its own."""
        out = Output(root, views)
        owner = root.owner
        group = self.partition.group_of.get(owner) if isinstance(owner, Operation) else None
        storable = all(isinstance(v, INVERTIBLE_VIEWS) for v in views) and (
            not views or store_view(graph.shape_of(root), views, graph.shape_of(views[-1].result)) is not None)
        if group is not None and storable:
            plan = self.plans[group.gid]
        else:
            cuts = cut_points(root, list(views))
            for cut in cuts:  # a copy reads the last materialised prefix of its chain
                self.output_for(root, views[:cut])
            if group is not None and not cuts:  # ... or the producer's plain result
                self.output_for(root, ())
            plan = next((p for p in self.copies if out in p.outputs), None) or self._copy_plan(root)
        if out not in plan.outputs:
            plan.outputs.append(out)
        return out

    def _copy_plan(self, root: SSAValue) -> KernelPlan:
        plan = KernelPlan(Group(-1 - len(self.copies), "pointwise", graph.shape_of(root)))
        self.copies.append(plan)
        return plan

    def plan_outputs(self) -> None:
        """Register every buffer some kernel or the return reads whole."""
        for g in self.partition.groups:
            for op in g.ops:
                for operand in op.operands:
                    self._plan_read(operand, g)
        for value in self.returned:
            root, chain = view_chain(value)
            self.output_for(root, tuple(chain))

    def _in_group(self, value: SSAValue) -> bool:
        return isinstance(value.owner, Operation) and value.owner in self.partition.group_of

    def _plan_read(self, operand: SSAValue, group: Group) -> None:
        root, chain = view_chain(operand)
        if self._in_group(root) and self.partition.group_of[root.owner] is group:
            return
        cuts = cut_points(root, chain)
        for cut in cuts:
            self.output_for(root, tuple(chain[:cut]))
        if not cuts and self._in_group(root):
            self.output_for(root, ())

    def order(self) -> list[KernelPlan]:
        """Groups in dependence order, each copy kernel right after what it copies."""
        ordered = []
        copies_of = {}
        for plan in self.copies:
            owner = plan.outputs[0].base.owner
            key = self.partition.group_of[owner].gid if self._in_group(plan.outputs[0].base) else None
            copies_of.setdefault(key, []).append(plan)
        ordered.extend(copies_of.get(None, []))
        for gid in nx.lexicographical_topological_sort(self.partition.dag):
            ordered.append(self.plans[gid])
            ordered.extend(copies_of.get(gid, []))
        return ordered

    def build(self) -> None:
        self.plan_outputs()
        block = self.func_op.body.block
        ret = block.last_op
        insert_before = ret
        for index, plan in enumerate(self.order()):
            op = self.build_kernel(plan, index)
            block.insert_op_before(op, insert_before)
            for out, result in zip(plan.outputs, op.results):
                self.results[out] = result
        new_returns = [self.external_value(v) for v in self.returned]
        ret.operands = new_returns
        self._erase_dead(block)
        leftover = [op.name for op in block.ops if isinstance(op, graph.GraphOp) and not isinstance(op, graph.WeightOp)]
        assert not leftover, f"fuse left graph ops outside kernels: {leftover}"

    def external_value(self, value: SSAValue) -> SSAValue:
        """The function-level value for an old value read whole by a kernel or the return."""
        root, chain = view_chain(value)
        for cut in range(len(chain), -1, -1):
            out = Output(root, tuple(chain[:cut]))
            if out in self.results:
                assert cut == len(chain), "a partial view reached the function level"
                return self.results[out]
        return value

    def build_kernel(self, plan: KernelPlan, index: int) -> kernel.KernelOp:
        region_builder = RegionBuilder(self)
        for op in plan.group.ops:
            region_builder.clone_op(op)
        yielded = [region_builder.value_of_output(out) for out in plan.outputs]
        region_builder.block.add_op(kernel.YieldOp(operands=[yielded]))
        name = kernel_name(index, plan)
        attrs = {"name": StringAttr(name), "kind": StringAttr(plan.group.kind)}
        return kernel.KernelOp(
            operands=[region_builder.inputs],
            result_types=[[v.type for v in yielded]],
            regions=[Region(region_builder.block)],
            attributes=attrs,
        )

    def _erase_dead(self, block: Block) -> None:
        for op in reversed(list(block.ops)):
            if isinstance(op, graph.GraphOp) and all(not r.uses for r in op.results):
                block.erase_op(op)


class RegionBuilder:
    """Clones one group's ops into a fresh block, turning outside values into block args."""

    def __init__(self, builder: KernelBuilder):
        self.builder = builder
        self.block = Block()
        self.inputs: list[SSAValue] = []
        self.mapping: dict[SSAValue, SSAValue] = {}

    def clone_op(self, op: Operation) -> None:
        operands = [self.value(v) for v in op.operands]
        new = op.clone_without_regions()
        new.operands = operands
        self.block.add_op(new)
        for old, fresh in zip(op.results, new.results):
            self.mapping[old] = fresh

    def value(self, value: SSAValue) -> SSAValue:
        if value in self.mapping:
            return self.mapping[value]
        root, chain = view_chain(value)
        if not chain:
            return self._leaf(value)
        cut = self._materialised(root, chain)
        if cut is None:
            current, rest = self.value(root), chain
        else:
            current, rest = self._input(self.builder.results[Output(root, tuple(chain[:cut]))]), chain[cut:]
        for op in rest:
            self.clone_view(op, current)
            current = self.mapping[op.result]
        return current

    def _materialised(self, root: SSAValue, chain: list[Operation]) -> int | None:
        """The longest prefix of the chain some kernel already wrote as a buffer of its own."""
        if root in self.mapping:
            return None
        built = [k for k in range(len(chain), 0, -1) if Output(root, tuple(chain[:k])) in self.builder.results]
        return built[0] if built else None

    def clone_view(self, op: Operation, operand: SSAValue) -> None:
        if op.result in self.mapping:
            return
        new = op.clone_without_regions()
        new.operands = [operand]
        self.block.add_op(new)
        self.mapping[op.result] = new.result

    def _leaf(self, value: SSAValue) -> SSAValue:
        owner = value.owner
        if isinstance(owner, CLONED_SOURCES):
            self.clone_op(owner)
            return self.mapping[value]
        if self.builder._in_group(value):
            outer = self.builder.results[Output(value)]
        else:
            outer = value
        fresh = self._input(outer)
        self.mapping[value] = fresh
        return fresh

    def _input(self, outer: SSAValue) -> SSAValue:
        for i, existing in enumerate(self.inputs):
            if existing is outer:
                return self.block.args[i]
        self.inputs.append(outer)
        arg = self.block.insert_arg(outer.type, len(self.block.args))
        arg.name_hint = outer.name_hint
        return arg

    def value_of_output(self, out: Output) -> SSAValue:
        cut = self._materialised(out.base, list(out.views))
        if cut is not None and cut < len(out.views):  # a copy that starts from a materialised prefix
            return self.value(out.views[-1].result)
        current = self.value(out.base)
        for op in out.views:
            self.clone_view(op, current)
            current = self.mapping[op.result]
        return current


def kernel_name(index: int, plan: KernelPlan) -> str:
    names = []
    for op in plan.group.ops:
        short = op.name.removeprefix("graph.")
        if short not in names:
            names.append(short)
    return f"k{index}_" + ("_".join(names[:3]) if names else "copy")
