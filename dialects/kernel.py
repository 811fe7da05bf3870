"""The `kernel` dialect: the graph after fusion, as a sequence of kernels.

A `kernel.kernel` owns a region holding the `graph` ops it fused; it reads only
its operands (the region is isolated from above) and yields the values it
writes out. `kind` names the kernel template the tile lowering uses:
`matmul` (matmul/linear with an epilogue), `row` (a reduction over the last dim
with its pointwise prologue and epilogue), `attention` (one online-softmax
flash-attention kernel), `pointwise` (pointwise ops and concats), `gather` (rows picked by an index,
with a pointwise epilogue), `scatter` (rows written at an index, into the buffer of its
first operand: its result is that buffer). The `tile`
pass records its decisions on the kernel as attributes (`tiles`, `stages`).
"""

from __future__ import annotations

from xdsl.dialects.builtin import DenseArrayBase, IntegerAttr, StringAttr, TensorType
from xdsl.ir import Dialect
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    opt_attr_def,
    region_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

KERNEL_KINDS = ("matmul", "row", "attention", "pointwise", "gather", "scatter")


@irdl_op_definition
class KernelOp(IRDLOperation):
    name = "kernel.kernel"
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    body = region_def("single_block")
    kernel_name = attr_def(StringAttr, attr_name="name")
    kind = attr_def(StringAttr)
    tiles = opt_attr_def(DenseArrayBase)
    stages = opt_attr_def(IntegerAttr)
    traits = traits_def(IsolatedFromAbove(), Pure())
    assembly_format = "$name `(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs) $body"

    def verify_(self):
        if self.kind.data not in KERNEL_KINDS:
            raise VerifyException(f"kernel.kernel: kind must be one of {KERNEL_KINDS}, got '{self.kind.data}'")
        block = self.body.block
        if [a.type for a in block.args] != [v.type for v in self.inputs]:
            raise VerifyException(f"kernel {self.kernel_name.data}: block arguments must match the operands")
        last = block.last_op
        if not isinstance(last, YieldOp) or [v.type for v in last.values] != [r.type for r in self.outputs]:
            raise VerifyException(f"kernel {self.kernel_name.data}: must end in a kernel.yield of its result types")


@irdl_op_definition
class YieldOp(IRDLOperation):
    name = "kernel.yield"
    values = var_operand_def(TensorType)
    traits = traits_def(IsTerminator(), HasParent(KernelOp))
    assembly_format = "$values attr-dict `:` type($values)"


Kernel = Dialect("kernel", [KernelOp, YieldOp])
