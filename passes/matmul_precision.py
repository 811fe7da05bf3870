"""`matmul-precision`: the products of linear layers in bf16, accumulated in f32 (graph level, before `fuse`).

What `torch.set_float32_matmul_precision("medium")` permits oneDNN: an fp32 model's linear layers read
their input and weight rounded to bf16 (round to nearest even) and accumulate the products in f32; the
result stays f32, and nothing else in the model changes. Decide, then rewrite: every linear of an f32
input and an f32 model weight (read as it is, transposed, or stored [K, N] as GPT-2's Conv1D) becomes

    %w16 = graph.weight "<name>#bf16" : tensor<NxKxbf16>
    %x16 = graph.cast %x : tensor<...xf32> -> tensor<...xbf16>
    %y   = graph.linear %x16, %w16 (, %bias) : (...) -> tensor<...xf32>

The rounded weight is derived from the float weight by name (llmc.quantization.weight_value), so the
pass needs no weight values and a dump replays. Downstream this is an ordinary linear of bf16 operands:
`fuse` folds the cast into the kernel that produces x (which then writes x in bf16, half the bytes), the C
backend runs it on AMX tiles or vdpbf16ps where the host has them (f32 FMA of the exact bf16 values
elsewhere: the same numbers), Triton on tensor cores. Quantized linears keep their own format.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import bf16, f32
from xdsl.passes import ModulePass

from llmc.dialects import graph
from llmc.errors import PassOptionError
from llmc.passes.quantize import erase_unread_weights, linear_weights, read_as_linear
from llmc.quantization import bf16_name

PRECISIONS = ("f32", "bf16")


def bf16_linears(func_op: func.FuncOp):
    """(linear, weight op, stored [K, N]) for every product of an f32 input and an f32 model weight."""
    for linear, weight, transposed in list(linear_weights(func_op)):
        lhs = linear.input if isinstance(linear, graph.LinearOp) else linear.lhs
        if lhs.type.element_type == f32 and weight.result.type.element_type == f32:
            yield linear, weight, transposed


def round_linears(module: builtin.ModuleOp) -> None:
    """Rewrite every such product to bf16 operands."""
    for func_op in (o for o in module.ops if isinstance(o, func.FuncOp)):
        made: dict[tuple[str, bool], graph.WeightOp] = {}
        for linear, weight, transposed in list(bf16_linears(func_op)):
            key = (weight.weight_name.data, transposed)
            if key not in made:
                shape = graph.shape_of(weight.result)
                made[key] = graph.WeightOp(bf16_name(*key), graph.tensor(shape[::-1] if transposed else shape, bf16),
                                           weight.loc_str)
                weight.parent_block().insert_op_after(made[key], weight)
            linear = read_as_linear(func_op, linear, made[key].result)
            x = linear.input
            cast = graph.CastOp(operands=[x], result_types=[graph.tensor(graph.shape_of(x), bf16)])
            func_op.body.block.insert_op_before(cast, linear)
            linear.operands[0] = cast.result
        erase_unread_weights(func_op)


@dataclass(frozen=True)
class MatmulPrecisionPass(ModulePass):
    name = "matmul-precision"

    precision: str = "bf16"
    """bf16: linear layers' products read bf16-rounded operands and accumulate in f32; f32 leaves them."""

    def apply(self, ctx: Context, op: builtin.ModuleOp) -> None:
        if self.precision not in PRECISIONS:
            raise PassOptionError(f"matmul-precision: precision must be one of {', '.join(PRECISIONS)}, "
                                  f"got '{self.precision}'")
        if self.precision == "bf16":
            round_linears(op)
