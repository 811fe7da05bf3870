"""Decide which graph ops share a kernel (the decision half of `fuse`).

Heuristic, in the spirit of Inductor's scheduler but over whole LLM ops:
1. Anchors open groups: matmul/linear (`matmul`), reductions, softmax and
   layer_norm (`row`), attention (`attention`), gathers (`gather`: its
   source and index are read from other kernels, so a gather group never
   absorbs the producers of its index), scatters (`scatter`: a KV-cache write, alone: it
   stores only the new rows). Row anchors and concats first
   pull in the single-use pointwise ops that feed them (prologues: x.pow(2)
   before mean, -x before the concat of rotate_half).
2. Walking the program in order, a pointwise op joins the group of a direct
   producer whose iteration space it matches (epilogues: bias, GELU, residual,
   the rsqrt·x·w tail of RMSNorm); operands from two pointwise groups of one
   shape merge them. A join that would make the group graph cyclic is refused.
3. Everything else starts a pointwise group. Views are free: they are cloned
   into every consumer and become strides of its loads.

The result is a pure `Partition`, printable and testable without rewriting IR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from xdsl.ir import Operation

from llmc.dialects import graph
from llmc.passes.fusion.views import view_chain

# a dequantized weight is computed where a linear reads it, inside that linear's K loop
FREE_OPS = (*graph.VIEW_OPS, *graph.SOURCE_OPS, graph.DequantizeOp)
FUSIBLE_OPS = (*graph.POINTWISE_OPS, graph.ConcatOp)


@dataclass
class Group:
    gid: int
    kind: str
    shape: tuple[int, ...]
    ops: list[Operation] = field(default_factory=list)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.kind == "row":
            return shape in (self.shape, self.shape[:-1] + (1,), self.shape[:-1])
        return self.kind in ("matmul", "pointwise", "gather") and shape == self.shape


@dataclass
class Partition:
    groups: list[Group]
    group_of: dict[Operation, Group]
    dag: nx.DiGraph

    def describe(self) -> str:
        lines = []
        for g in self.groups:
            names = ", ".join(op.name.removeprefix("graph.") for op in g.ops)
            lines.append(f"group {g.gid} ({g.kind}, {'x'.join(map(str, g.shape))}): {names}")
        return "\n".join(lines)


def anchor_kind(op: Operation) -> str | None:
    if isinstance(op, graph.MatmulOp | graph.LinearOp):
        return "matmul"
    if isinstance(op, graph.ROW_OPS):
        return "row"
    if isinstance(op, graph.AttentionOp):
        return "attention"
    if isinstance(op, graph.GatherOp):
        return "gather"
    if isinstance(op, graph.ScatterOp):
        return "scatter"
    return None


def iteration_shape(op: Operation) -> tuple[int, ...]:
    if isinstance(op, graph.ROW_OPS):
        return graph.shape_of(op.operands[0])
    if isinstance(op, graph.ScatterOp):
        return graph.shape_of(op.source)
    return graph.shape_of(op.results[0])


class Partitioner:
    def __init__(self, ops: list[Operation]):
        self.ops = [op for op in ops if isinstance(op, graph.GraphOp)]
        self.groups: list[Group] = []
        self.group_of: dict[Operation, Group] = {}
        self.dag = nx.DiGraph()

    def run(self) -> Partition:
        for op in self.ops:
            if isinstance(op, (*graph.ROW_OPS, graph.ConcatOp)):
                group = self.new_group(op, "row" if anchor_kind(op) else "pointwise")
                self.absorb_prologue(op, group)
        for op in self.ops:
            if op in self.group_of or isinstance(op, FREE_OPS):
                continue
            kind = anchor_kind(op)
            if kind is not None:
                self.new_group(op, kind)
            elif not self.join_producer(op):
                self.new_group(op, "pointwise")
        self.groups = [g for g in self.groups if g.ops]
        for g in self.groups:
            g.ops.sort(key=self.ops.index)
        return Partition(self.groups, self.group_of, self.dag)

    def new_group(self, op: Operation, kind: str) -> Group:
        group = Group(len(self.groups), kind, iteration_shape(op))
        self.groups.append(group)
        self.dag.add_node(group.gid)
        self.assign(op, group)
        return group

    def assign(self, op: Operation, group: Group) -> None:
        group.ops.append(op)
        self.group_of[op] = group
        for source in self.source_groups(op):
            if source is not group:
                self.dag.add_edge(source.gid, group.gid)
        for consumer in self.consumer_groups(op):
            if consumer is not group:
                self.dag.add_edge(group.gid, consumer.gid)

    def consumer_groups(self, op: Operation) -> list[Group]:
        found = []
        pending = list(op.results)
        while pending:
            for use in pending.pop().uses:
                user = use.operation
                if isinstance(user, graph.VIEW_OPS):
                    pending.append(user.result)
                elif user in self.group_of:
                    found.append(self.group_of[user])
        return found

    def source_groups(self, op: Operation) -> list[Group]:
        found = []
        for operand in op.operands:
            root, _ = view_chain(operand)
            owner = root.owner
            if isinstance(owner, Operation) and owner in self.group_of:
                found.append(self.group_of[owner])
        return found

    def absorb_prologue(self, op: Operation, group: Group) -> None:
        for operand in op.operands:
            producer = operand.owner
            if not isinstance(producer, graph.POINTWISE_OPS) or producer in self.group_of:
                continue
            if not operand.has_one_use():
                continue
            if group.kind == "row" and graph.shape_of(operand) != group.shape:
                continue
            self.assign(producer, group)
            self.absorb_prologue(producer, group)

    def join_producer(self, op: Operation) -> bool:
        if not isinstance(op, FUSIBLE_OPS):
            return False
        shape = graph.shape_of(op.results[0])
        candidates = []
        for operand in op.operands:
            owner = operand.owner
            if isinstance(owner, Operation) and owner in self.group_of:
                group = self.group_of[owner]
                if group.accepts_shape(shape) and group not in candidates:
                    candidates.append(group)
        for target in candidates:
            if self.would_cycle(op, target) or self.reads_through_view(op, target) or self.crosses_rows(op, target):
                continue
            for other in candidates:
                if other is not target and other.kind == "pointwise" and target.kind != "gather" and other.shape == target.shape:
                    self.try_merge(target, other)
            self.assign(op, target)
            return True
        return False

    def would_cycle(self, op: Operation, target: Group) -> bool:
        return any(
            source is not target and nx.has_path(self.dag, target.gid, source.gid)
            for source in self.source_groups(op)
        )

    def reads_through_view(self, op: Operation, target: Group) -> bool:
        """An operand that is a view of a value of `target`: the group cannot index it."""
        for operand in op.operands:
            root, chain = view_chain(operand)
            if chain and isinstance(root.owner, Operation) and self.group_of.get(root.owner) is target:
                return True
        return False

    def crosses_rows(self, op: Operation, target: Group) -> bool:
        """A row group's reduced value (one per row, shape[:-1]) read by a wider op: numpy broadcasting
        lines it up with the last dim, one value per column, which a row kernel does not have."""
        if target.kind != "row":
            return False
        rank = len(graph.shape_of(op.results[0]))
        for operand in op.operands:
            owner = operand.owner
            reduced = graph.shape_of(operand)
            if isinstance(owner, Operation) and self.group_of.get(owner) is target and 1 <= len(reduced) < rank:
                return True
        return False

    def try_merge(self, target: Group, other: Group) -> None:
        """Fold `other` into `target` unless a path between them goes through a third group."""
        merged = nx.contracted_nodes(self.dag, target.gid, other.gid, self_loops=False)
        if not nx.is_directed_acyclic_graph(merged):
            return
        self.dag = merged
        for op in other.ops:
            target.ops.append(op)
            self.group_of[op] = target
        other.ops = []


def partition(ops: list[Operation]) -> Partition:
    """Group the ops of one function body into kernels."""
    return Partitioner(ops).run()
