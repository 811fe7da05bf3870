"""`quantize`: weight-only quantization of linear layers (graph level, before `fuse`).

Decide, then rewrite. `plan_quantization` is a pure function from the module
and the options to one `LayerChoice` per linear weight (format, or why the
layer stays float); `describe_plan` prints it. The rewrite replaces each chosen
linear's weight by

    %codes  = graph.weight "<name>#int4g32.codes"  : tensor<Nx(K/2)xi8>
    %scales = graph.weight "<name>#int4g32.scales" : tensor<Nx(K/32)xf32>
    %w      = graph.dequantize %codes, %scales {format = "int4"} : ... -> tensor<NxKxf32>

and the linear reads %w. The quantized weights are derived from the float
weight by name (llmc.quantization.weight_value), so the pass needs no weight
values and its output replays from a dump. `fuse` keeps the dequantize inside
the linear's kernel: the backends dequantize in registers, in the K loop.

Defaults, as users of 4-bit formats report what breaks: every linear is
quantized; for int4 the output projection (the last linear whose result the
function returns: the logits) stays int8. Embeddings are gathers, never linears, and
stay float.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import StringAttr, f32, i8
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass

from llmc.dialects import graph
from llmc.errors import PassOptionError
from llmc.passes.fusion.views import view_chain
from llmc.quantization import QuantFormat, derived_name

HEAD_CHOICES = ("auto", "same", "int8", "float")


@dataclass(frozen=True)
class LayerChoice:
    weight: str
    shape: tuple[int, int]  # [N, K], as the linear reads it
    format: QuantFormat | None
    reason: str
    transposed: bool = False  # the weight is stored [K, N] (read as x @ w): its transpose is quantized

    def bytes_before(self) -> int:
        return self.shape[0] * self.shape[1] * 4

    def bytes_after(self) -> int:
        return self.bytes_before() if self.format is None else quantized_bytes(self.shape, self.format)


def quantized_bytes(shape: tuple[int, int], fmt: QuantFormat) -> int:
    """Codes, scales and zero points of an [N, K] weight."""
    n, k = shape
    groups = fmt.groups(k)
    return n * fmt.code_columns(k) + n * groups * 4 * (1 if fmt.symmetric else 2)


def describe_plan(choices: list[LayerChoice]) -> str:
    lines = [f"{'weight':<44}{'shape':>14}  {'format':<32}{'MiB before':>11}{'after':>8}  why"]
    for c in choices:
        fmt = c.format.describe() if c.format else "float (unchanged)"
        lines.append(f"{c.weight[:43]:<44}{'x'.join(map(str, c.shape)):>14}  {fmt:<32}"
                     f"{c.bytes_before() / 2**20:>11.2f}{c.bytes_after() / 2**20:>8.2f}  {c.reason}")
    before = sum(c.bytes_before() for c in choices)
    after = sum(c.bytes_after() for c in choices)
    lines.append(f"{'total':<44}{'':>14}  {'':<32}{before / 2**20:>11.2f}{after / 2**20:>8.2f}")
    return "\n".join(lines)


def _returned_through_views(value: SSAValue, returned: set[SSAValue]) -> bool:
    pending = [value]
    while pending:
        current = pending.pop()
        if current in returned:
            return True
        pending += [u.operation.results[0] for u in current.uses if isinstance(u.operation, graph.VIEW_OPS)]
    return False


def linear_weights(func_op: func.FuncOp):
    """(linear, weight op, stored [K, N]) for every linear whose weight is a model weight read as it is,
    every x @ weight.T (what aot_autograd makes of a linear: a matmul of the transposed weight), and
    every x @ weight of a weight stored [K, N] (GPT-2's Conv1D)."""
    for op in func_op.body.block.ops:
        if isinstance(op, graph.LinearOp):
            root, chain = view_chain(op.weight)
            if not chain and isinstance(root.owner, graph.WeightOp):
                yield op, root.owner, False
        elif isinstance(op, graph.MatmulOp) and len(graph.shape_of(op.rhs)) == 2:
            root, chain = view_chain(op.rhs)
            if not isinstance(root.owner, graph.WeightOp):
                continue
            if not chain:
                yield op, root.owner, True
            elif len(chain) == 1 and isinstance(chain[0], graph.PermuteOp) and list(chain[0].perm.get_values()) == [1, 0]:
                yield op, root.owner, False


def plan_quantization(module: builtin.ModuleOp, fmt: QuantFormat, head: str = "auto",
                      skip: tuple[str, ...] = ()) -> list[LayerChoice]:
    """One choice per distinct linear weight, in program order."""
    if head not in HEAD_CHOICES:
        raise PassOptionError(f"quantize: head must be one of {', '.join(HEAD_CHOICES)}, got '{head}'")
    choices: dict[tuple[str, bool], LayerChoice] = {}
    for func_op in (o for o in module.ops if isinstance(o, func.FuncOp)):
        returned = set(func_op.body.block.last_op.operands)
        linears = list(linear_weights(func_op))
        # the output projection: the last linear whose result the function returns (the logits; a KV
        # projection an HF model also returns, as its cache, comes earlier)
        heads = [linear for linear, _, _ in linears if _returned_through_views(linear.result, returned)]
        for linear, weight, transposed in linears:
            name = weight.weight_name.data
            if (name, transposed) in choices:
                continue
            shape = graph.shape_of(weight.result)
            n, k = shape[::-1] if transposed else shape
            is_head = bool(heads) and linear is heads[-1]
            if any(fnmatch.fnmatch(name, pattern) for pattern in skip):
                chosen, reason = None, "skipped by the skip option"
            elif is_head and head == "float":
                chosen, reason = None, "output projection kept float (head=float)"
            elif is_head and (head == "int8" or (head == "auto" and fmt.bits == 4)):
                chosen, reason = QuantFormat(8, activations=fmt.activations), "output projection: int8 (head)"
            else:
                chosen, reason = fmt, "output projection" if is_head else "linear"
            if transposed:
                reason += " (stored [K, N]: its transpose is quantized)"
            choices[name, transposed] = LayerChoice(name, (n, k), chosen, reason, transposed)
    return list(choices.values())


def apply_plan(module: builtin.ModuleOp, choices: list[LayerChoice]) -> None:
    chosen = {(c.weight, c.transposed): c for c in choices if c.format is not None}
    for func_op in (o for o in module.ops if isinstance(o, func.FuncOp)):
        made: dict[tuple[str, bool], SSAValue] = {}
        for linear, weight, transposed in list(linear_weights(func_op)):
            key = (weight.weight_name.data, transposed)
            choice = chosen.get(key)
            if choice is None:
                continue
            if key not in made:
                made[key] = _dequantized(weight, choice)
            linear = read_as_linear(func_op, linear, made[key])
            if choice.format.activations == "int8":
                linear.attributes["activations"] = StringAttr("int8")
        erase_unread_weights(func_op)


def erase_unread_weights(func_op: func.FuncOp) -> None:
    """The float weights (and their transposes) a rewrite of the linears left unread."""
    for op in reversed(list(func_op.body.block.ops)):
        if isinstance(op, (graph.PermuteOp, graph.WeightOp)) and not op.result.uses:
            func_op.body.block.erase_op(op)


def read_as_linear(func_op: func.FuncOp, linear, weight: SSAValue) -> graph.LinearOp:
    """The linear reading `weight`: x @ w.T and x @ w (a [K, N] weight) become the linear of the replacement
    [N, K] weight (dequantized, or rounded to bf16)."""
    if isinstance(linear, graph.LinearOp):
        linear.operands[1] = weight
        return linear
    replacement = graph.LinearOp(operands=[linear.lhs, weight, []], result_types=[linear.result.type],
                                 attributes=dict(linear.attributes))
    func_op.body.block.insert_op_before(replacement, linear)
    linear.result.replace_all_uses_with(replacement.result)
    func_op.body.block.erase_op(linear)
    return replacement


def _dequantized(weight: graph.WeightOp, choice: LayerChoice) -> SSAValue:
    n, k = choice.shape
    fmt = choice.format
    groups = fmt.groups(k)
    parts = [("codes", (n, fmt.code_columns(k)), i8), ("scales", (n, groups), f32)]
    if not fmt.symmetric:
        parts.append(("zeros", (n, groups), f32))
    loc = weight.loc_str
    ops = [graph.WeightOp(derived_name(choice.weight, fmt, part, choice.transposed), graph.tensor(shape, element), loc)
           for part, shape, element in parts]
    attrs = {"format": StringAttr("int8" if fmt.bits == 8 else "int4"), "group": graph.int_attr(fmt.group_size(k))}
    if loc:
        attrs["loc"] = StringAttr(loc)
    element = weight.result.type.element_type  # a 16-bit model's weight dequantizes to its own type
    dequantize = graph.DequantizeOp(operands=[ops[0].result, ops[1].result, [o.result for o in ops[2:]]],
                                    result_types=[graph.tensor((n, k), element)], attributes=attrs)
    block = weight.parent_block()
    anchor = weight
    for op in (*ops, dequantize):
        block.insert_op_after(op, anchor)
        anchor = op
    return dequantize.result


@dataclass(frozen=True)
class QuantizePass(ModulePass):
    name = "quantize"

    weights: str = "int8"
    """int8 (per output channel) or int4."""
    group: int = 32
    """int4: input channels per scale (32, 64, 128), or 0 for one scale per output channel."""
    symmetric: bool = True
    """int4: False stores a zero point per group."""
    activations: str = "float"
    """"int8" rounds each quantized linear's input to int8 per block of 32, for integer dot products."""
    head: str = "auto"
    """The output projection: auto (int8 when weights=int4), same, int8 or float."""
    skip: tuple[str, ...] = ()
    """Weight-name patterns (fnmatch) left in float."""

    def format(self) -> QuantFormat:
        if self.activations not in ("float", "int8"):
            raise PassOptionError(f"quantize: activations must be float or int8, got '{self.activations}'")
        act8 = ":a8" if self.activations == "int8" else ""
        if self.weights == "int8":
            return QuantFormat.parse(f"int8{act8}")
        if self.weights != "int4":
            raise PassOptionError(f"quantize: weights must be int8 or int4, got '{self.weights}'")
        group = "channel" if self.group == 0 else str(self.group)
        return QuantFormat.parse(f"int4:{group}:{'sym' if self.symmetric else 'asym'}{act8}")

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        apply_plan(op, plan_quantization(op, self.format(), self.head, tuple(self.skip)))


def pass_spec(fmt: QuantFormat, head: str = "auto") -> str:
    """The pipeline text that applies `fmt`: quantize{weights=int4 group=32}."""
    if fmt.bits == 8:
        options = "weights=int8" + (" activations=int8" if fmt.activations == "int8" else "")
    else:
        options = f"weights=int4 group={fmt.group} symmetric={'true' if fmt.symmetric else 'false'}"
        if fmt.activations == "int8":
            options += " activations=int8"
    return f"quantize{{{options}{'' if head == 'auto' else f' head={head}'}}}"
