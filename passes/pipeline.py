"""`pipeline{stages=N}`: software-pipeline the loops the lowering marked.

Decide, then expand, as MLIR's LoopPipelining and Triton's pipeliner do:
- `schedule_loop` puts every tile.load of the loop body that feeds a
  `tile.dot` (the operand tiles whose latency the pipeline hides), with the
  index math feeding it, in stage 0 and everything else — the math, and
  small loads read by pointwise code such as an attention mask tile — in
  stage N-1.
- `expand` emits a prologue issuing the loads of iterations 0..N-2, a steady
  state body that computes iteration i while loading iteration i+N-1 (the
  loaded tiles ride in the loop's iter_args as a queue), and an epilogue that
  drains the last N-1 iterations without loading. A loop whose trip count is
  only known at run time (causal attention) keeps its full range; the loads it
  issues past the end stay inside the view (masked) and are never consumed
  (the loop says so, `llmc.loads_past_end`: the C backend skips building
  such a tile when it is a zero-padded copy).

Every op the expansion creates carries `llmc.pipeline` = prologue / body /
epilogue, and the loop `llmc.pipeline_stages`, so a dump shows the schedule.

`mode=delegate` decides the same schedule but leaves the loop as it is,
marked `llmc.pipeline = "delegated"` with its stage count and its stage-0
loads marked `"stage0"`: the backend's own pipeliner does the expansion (the
Triton backend hands the count to `tl.range(num_stages=N)`, which turns the
loads into asynchronous copies into multi-buffered shared memory). That is
the GPU default; CPU targets expand.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, builtin, scf
from xdsl.dialects.builtin import IndexType, IntegerAttr, StringAttr
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass

from llmc.dialects import graph, tile
from llmc.errors import PassOptionError
from llmc.passes.lowering.templates import STAGES_ATTR

PHASE_ATTR = "llmc.pipeline"
AHEAD_ATTR = "llmc.loads_past_end"  # a pipelined loop of full range: its body loads the tiles of iteration i+N-1


def schedule_loop(loop: scf.ForOp) -> list[Operation] | None:
    """The stage-0 ops (loads and their address math), in order; None if a load depends on the carried values."""
    body = loop.body.block
    carried = set(body.args[1:])
    stage0: set[Operation] = set()

    def pull(op: Operation) -> bool:
        if op in stage0:
            return True
        for operand in op.operands:
            if operand in carried:
                return False
            owner = operand.owner
            if isinstance(owner, Operation) and owner.parent_block() is body and not pull(owner):
                return False
        stage0.add(op)
        return True

    for op in body.ops:
        if isinstance(op, tile.LoadOp) and feeds_dot(op.result) and not pull(op):
            return None
    return [op for op in body.ops if op in stage0]


def feeds_dot(value: SSAValue) -> bool:
    """Whether a loaded tile is a dot operand (possibly through a widening or narrowing cast)."""
    for use in value.uses:
        user = use.operation
        if isinstance(user, tile.DotOp) or (isinstance(user, graph.CastOp) and feeds_dot(user.result)):
            return True
    return False


def _const(value: SSAValue) -> int | None:
    owner = value.owner
    if isinstance(owner, arith.ConstantOp) and isinstance(owner.value, IntegerAttr):
        return owner.value.value.data
    return None


def trip_count(loop: scf.ForOp) -> int | None:
    lb, ub, step = _const(loop.lb), _const(loop.ub), _const(loop.step)
    if None in (lb, ub, step):
        return None
    return max(0, -(-(ub - lb) // step))


class Expander:
    def __init__(self, loop: scf.ForOp, stage0: list[Operation], stages: int):
        self.loop, self.stage0, self.stages = loop, stage0, stages
        self.body = loop.body.block
        self.compute = [op for op in self.body.ops if op not in set(stage0) and not isinstance(op, scf.YieldOp)]
        self.loads = [op for op in stage0 if isinstance(op, tile.LoadOp)]
        self.static = trip_count(loop) is not None

    def emit(self, ops: list[Operation], mapping: dict, phase: str, into) -> None:
        for op in ops:
            new = op.clone(value_mapper=mapping)
            new.attributes[PHASE_ATTR] = StringAttr(phase)
            into(new)

    def iv_at(self, base: SSAValue, iterations: int, into) -> SSAValue:
        if iterations == 0:
            return base
        offset = arith.ConstantOp(IntegerAttr(iterations * _const(self.loop.step), IndexType()))
        add = arith.AddiOp(base, offset)
        into(offset)
        into(add)
        return add.result

    def issue_loads(self, iv: SSAValue, phase: str, into) -> list[SSAValue]:
        mapping = {self.body.args[0]: iv}
        self.emit(self.stage0, mapping, phase, into)
        return [mapping[op.results[0]] for op in self.loads]

    def expand(self) -> None:
        loop, n = self.loop, self.stages
        before = lambda op: loop.parent_block().insert_op_before(op, loop)  # noqa: E731
        queue = []
        for s in range(n - 1):
            queue.extend(self.issue_loads(self.iv_at(loop.lb, s, before), "prologue", before))
        upper = loop.ub
        if self.static:
            # The first drained iteration, exactly: ub - (n-1)*step would be off when step does not divide ub - lb.
            upper = self.iv_at(loop.lb, trip_count(loop) - (n - 1), before)
        new_loop = self.build_body(upper, queue)
        before(new_loop)
        finals = list(new_loop.results[: len(loop.iter_args)])
        if self.static:
            finals = self.drain(new_loop, upper, finals)
        for old, new in zip(loop.results, finals):
            old.replace_all_uses_with(new)
        loop.parent_block().erase_op(loop)

    def build_body(self, upper: SSAValue, queue: list[SSAValue]) -> scf.ForOp:
        loop, n, width = self.loop, self.stages, len(self.loads)
        carried = list(loop.iter_args)
        block = Block(arg_types=[IndexType(), *[v.type for v in carried], *[v.type for v in queue]])
        iv, iters, slots = block.args[0], block.args[1 : 1 + len(carried)], block.args[1 + len(carried) :]
        mapping = {self.body.args[0]: iv, **dict(zip(self.body.args[1:], iters))}
        mapping.update({op.results[0]: slot for op, slot in zip(self.loads, slots[:width])})
        self.emit(self.compute, mapping, "body", block.add_op)
        ahead = self.iv_at(iv, n - 1, block.add_op)
        fresh = self.issue_loads(ahead, "body", block.add_op)
        yielded = [mapping.get(v, v) for v in self.body.last_op.operands]
        block.add_op(scf.YieldOp(*yielded, *slots[width:], *fresh))
        new_loop = scf.ForOp(loop.lb, upper, loop.step, [*carried, *queue], Region(block))
        new_loop.attributes[STAGES_ATTR] = IntegerAttr(n, 64)
        new_loop.attributes[PHASE_ATTR] = StringAttr("body")
        if not self.static:  # its last N-1 iterations load past the end: tiles a backend may skip building
            new_loop.attributes[AHEAD_ATTR] = builtin.UnitAttr()
        return new_loop

    def drain(self, new_loop: scf.ForOp, upper: SSAValue, finals: list[SSAValue]) -> list[SSAValue]:
        width = len(self.loads)
        queue = list(new_loop.results[len(finals) :])
        after = new_loop
        ops: list[Operation] = []
        for e in range(self.stages - 1):
            iv = self.iv_at(upper, e, ops.append)
            mapping = {self.body.args[0]: iv, **dict(zip(self.body.args[1:], finals))}
            mapping.update({op.results[0]: q for op, q in zip(self.loads, queue[e * width : (e + 1) * width])})
            self.emit(self.compute, mapping, "epilogue", ops.append)
            finals = [mapping.get(v, v) for v in self.body.last_op.operands]
        for op in ops:
            after.parent_block().insert_op_after(op, after)
            after = op
        return finals


MODES = ("expand", "delegate")


def pipeline_loop(loop: scf.ForOp, stages: int, mode: str = "expand") -> bool:
    stage0 = schedule_loop(loop)
    trips = trip_count(loop)
    if trips is not None:
        stages = min(stages, trips)
    if stage0 is None or stages < 2 or not any(isinstance(op, tile.LoadOp) for op in stage0):
        loop.attributes[STAGES_ATTR] = IntegerAttr(1, 64)
        return False
    if mode == "delegate":
        loop.attributes[STAGES_ATTR] = IntegerAttr(stages, 64)
        loop.attributes[PHASE_ATTR] = StringAttr("delegated")
        for op in stage0:
            if isinstance(op, tile.LoadOp):
                op.attributes[PHASE_ATTR] = StringAttr("stage0")
        return True
    Expander(loop, stage0, stages).expand()
    return True


@dataclass(frozen=True)
class PipelinePass(ModulePass):
    name = "pipeline"

    stages: int | None = None
    """Stages for every marked loop; by default each loop's own `llmc.pipeline_stages`."""
    mode: str = "expand"
    """expand: prologue / body / epilogue in the IR; delegate: mark the loop for the backend's pipeliner."""

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        if self.stages is not None and self.stages < 1:
            raise PassOptionError("pipeline: stages must be at least 1")
        if self.mode not in MODES:
            raise PassOptionError(f"pipeline: mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        loops = [o for o in op.walk() if isinstance(o, scf.ForOp) and STAGES_ATTR in o.attributes
                 and PHASE_ATTR not in o.attributes]
        for loop in loops:
            pipeline_loop(loop, self.stages or loop.attributes[STAGES_ATTR].value.data, self.mode)
