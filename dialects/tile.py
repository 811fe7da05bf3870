"""The `tile` dialect: per-kernel programs over tiles, in the spirit of Triton's IR.

A `tile.kernel` is a symbol whose body runs once per program of its launch
grid; its block arguments are the buffers (memrefs) it reads and writes. Tiles
are builtin tensors (`tensor<64x32xf32>`); the `graph` dialect's pointwise ops
work on them unchanged, loops are `scf.for`, index math is `arith`. A load
gives a tile of the buffer's element type, a store rounds to it; fused
arithmetic is f32 (`graph.cast` widens 16-bit loads and narrows the 16-bit
operands of a `tile.dot`, which accumulates in f32).

Loads and stores are block-pointer style (like `tt.make_block_ptr`): the buffer
is seen as a 2-D view with `shape` and `strides` (in elements) starting at the
element offset `%base`; the block at `[%row, %col]` of that view is read, with
elements outside the view masked (`padding` fills them). Layout decisions are
attributes the passes set and backends obey: `order` (fastest dim first) and
`vec` from `coalesce`; `swizzle` (XOR-swizzled scratch tile) and `pack`
(panel-packed weights) from `swizzle`.
"""

from __future__ import annotations

from xdsl.dialects.builtin import (
    DenseArrayBase,
    FloatAttr,
    IndexType,
    IntegerAttr,
    MemRefType,
    StringAttr,
    f32,
    SymbolNameConstraint,
    SymbolRefAttr,
    TensorType,
)
from xdsl.ir import Dialect
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    opt_operand_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator, Pure, SymbolOpInterface
from xdsl.utils.exceptions import VerifyException

PADDINGS = ("zero", "neg_inf")
REDUCTIONS = ("sum", "max", "argmax")


def _check_view(op, shape: DenseArrayBase, strides: DenseArrayBase, tile: TensorType) -> None:
    if len(shape.get_values()) != 2 or len(strides.get_values()) != 2:
        raise VerifyException(f"{op.name}: shape and strides describe a 2-D view")
    if len(tile.get_shape()) != 2:
        raise VerifyException(f"{op.name}: tiles are 2-D, got {tile}")


@irdl_op_definition
class KernelOp(IRDLOperation):
    """One tile program; `grid` is the launch grid (programs per axis)."""

    name = "tile.kernel"
    sym_name = attr_def(SymbolNameConstraint())
    grid = attr_def(DenseArrayBase)
    kind = attr_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(SymbolOpInterface(), IsolatedFromAbove())
    assembly_format = "$sym_name attr-dict-with-keyword $body"

    def verify_(self):
        if any(not isinstance(a.type, MemRefType) for a in self.body.block.args):
            raise VerifyException(f"tile.kernel @{self.sym_name.data}: arguments must be memrefs")
        if any(g < 1 for g in self.grid.get_values()):
            raise VerifyException(f"tile.kernel @{self.sym_name.data}: empty grid")


@irdl_op_definition
class ReturnOp(IRDLOperation):
    name = "tile.return"
    traits = traits_def(IsTerminator(), HasParent(KernelOp))
    assembly_format = "attr-dict"


@irdl_op_definition
class LaunchOp(IRDLOperation):
    """Run every program of a tile.kernel's grid on these buffers."""

    name = "tile.launch"
    callee = attr_def(SymbolRefAttr)
    buffers = var_operand_def(MemRefType)
    assembly_format = "$callee `(` $buffers `)` attr-dict `:` type($buffers)"


@irdl_op_definition
class AllocOp(IRDLOperation):
    """An intermediate buffer; `offset` (bytes into the arena) comes from plan-memory."""

    name = "tile.alloc"
    result = result_def(MemRefType)
    offset = opt_attr_def(IntegerAttr)
    assembly_format = "attr-dict `:` type($result)"


@irdl_op_definition
class WeightOp(IRDLOperation):
    """A weight buffer looked up by name; `pack` records a packed layout chosen for it."""

    name = "tile.weight"
    weight_name = attr_def(StringAttr, attr_name="name")
    result = result_def(MemRefType)
    traits = traits_def(Pure())
    assembly_format = "$name attr-dict `:` type($result)"


@irdl_op_definition
class ProgramIdOp(IRDLOperation):
    name = "tile.program_id"
    axis = attr_def(IntegerAttr)
    result = result_def(IndexType)
    traits = traits_def(Pure())
    assembly_format = "attr-dict"


@irdl_op_definition
class TileCoordsOp(IRDLOperation):
    """Map a linear program id to (row tile, col tile); `group` > 1 is grouped (L2-swizzled) order."""

    name = "tile.tile_coords"
    pid = operand_def(IndexType)
    row = result_def(IndexType)
    col = result_def(IndexType)
    rows = attr_def(IntegerAttr)
    cols = attr_def(IntegerAttr)
    group = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$pid attr-dict"

    def verify_(self):
        if self.group.value.data < 1:
            raise VerifyException("tile.tile_coords: group must be >= 1")


@irdl_op_definition
class LoadOp(IRDLOperation):
    name = "tile.load"
    buffer = operand_def(MemRefType)
    base = operand_def(IndexType)
    row = operand_def(IndexType)
    col = operand_def(IndexType)
    result = result_def(TensorType)
    shape = attr_def(DenseArrayBase)
    strides = attr_def(DenseArrayBase)
    padding = opt_attr_def(StringAttr)
    order = opt_attr_def(DenseArrayBase)
    vec = opt_attr_def(IntegerAttr)
    swizzle = opt_attr_def(DenseArrayBase)
    pack = opt_attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$buffer `[` $base `]` `[` $row `,` $col `]` attr-dict `:` type($buffer) `->` type($result)"

    def verify_(self):
        _check_view(self, self.shape, self.strides, self.result.type)
        if self.padding is not None and self.padding.data not in PADDINGS:
            raise VerifyException(f"tile.load: padding must be one of {PADDINGS}")


@irdl_op_definition
class StoreOp(IRDLOperation):
    name = "tile.store"
    value = operand_def(TensorType)
    buffer = operand_def(MemRefType)
    base = operand_def(IndexType)
    row = operand_def(IndexType)
    col = operand_def(IndexType)
    shape = attr_def(DenseArrayBase)
    strides = attr_def(DenseArrayBase)
    order = opt_attr_def(DenseArrayBase)
    vec = opt_attr_def(IntegerAttr)
    assembly_format = (
        "$value `,` $buffer `[` $base `]` `[` $row `,` $col `]` attr-dict `:` type($value) `,` type($buffer)"
    )

    def verify_(self):
        _check_view(self, self.shape, self.strides, self.value.type)


@irdl_op_definition
class GatherOp(IRDLOperation):
    """A block whose rows are picked by an index tile: element (r, c) is view(rows[r], col + c).

    `rows` is an integer [R x 1] tile; a negative row counts from the end (+ height), a row
    outside [-height, height) is a run-time error the backend reports with the kernel's name.
    Columns outside the view read zero."""

    name = "tile.gather"
    buffer = operand_def(MemRefType)
    base = operand_def(IndexType)
    rows = operand_def(TensorType)
    col = operand_def(IndexType)
    result = result_def(TensorType)
    shape = attr_def(DenseArrayBase)
    strides = attr_def(DenseArrayBase)
    traits = traits_def(Pure())
    assembly_format = (
        "$buffer `[` $base `]` `[` $rows `,` $col `]` attr-dict `:` type($buffer) `,` type($rows) `->` type($result)"
    )

    def verify_(self):
        _check_view(self, self.shape, self.strides, self.result.type)
        rows = self.rows.type.get_shape()
        if len(rows) != 2 or rows[1] != 1 or rows[0] != self.result.type.get_shape()[0]:
            raise VerifyException("tile.gather: rows is an [R x 1] index tile for an R-row result")


@irdl_op_definition
class ScatterOp(IRDLOperation):
    """A store whose rows go where an index tile says: view(rows[r], col + c) = value(r, c), for the
    tile rows r with first + r < count (the source's rows; the rest of the tile is padding).

    A negative row counts from the end (+ height); a row outside [-height, height) is not written
    and is a run-time error the backend reports with the kernel's name. Columns outside the view
    are not written. The inverse of tile.gather: a KV-cache write."""

    name = "tile.scatter"
    value = operand_def(TensorType)
    buffer = operand_def(MemRefType)
    base = operand_def(IndexType)
    rows = operand_def(TensorType)
    first = operand_def(IndexType)
    col = operand_def(IndexType)
    shape = attr_def(DenseArrayBase)
    strides = attr_def(DenseArrayBase)
    count = attr_def(IntegerAttr)
    assembly_format = (
        "$value `,` $buffer `[` $base `]` `[` $rows `,` $col `]` `first` $first attr-dict `:` type($value) `,` "
        "type($buffer) `,` type($rows)"
    )

    def verify_(self):
        _check_view(self, self.shape, self.strides, self.value.type)
        rows = self.rows.type.get_shape()
        if len(rows) != 2 or rows[1] != 1 or rows[0] != self.value.type.get_shape()[0]:
            raise VerifyException("tile.scatter: rows is an [R x 1] index tile for an R-row value")


@irdl_op_definition
class ToIndexOp(IRDLOperation):
    """The one element of a 1x1 integer tile as an index: a loop bound read from data (how many
    cached keys are live)."""

    name = "tile.to_index"
    operand = operand_def(TensorType)
    result = result_def(IndexType)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand)"

    def verify_(self):
        if tuple(self.operand.type.get_shape()) != (1, 1):
            raise VerifyException("tile.to_index: needs a 1x1 tile")


@irdl_op_definition
class ScanOp(IRDLOperation):
    """Inclusive prefix sum of a tile along `axis` (axis 1: along each row)."""

    name = "tile.scan"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    axis = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if self.operand.type != self.result.type:
            raise VerifyException("tile.scan: the result has the operand's type")


@irdl_op_definition
class DotOp(IRDLOperation):
    """acc + lhs @ rhs on tiles."""

    name = "tile.dot"
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    acc = operand_def(TensorType)
    result = result_def(TensorType)
    # "int8": lhs rounded to int8 per block of 32 columns first (a linear's int8 activations)
    activations = opt_attr_def(StringAttr)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs `,` $acc attr-dict `:` functional-type(operands, results)"

    def verify_(self):
        (m, k), (k2, n) = self.lhs.type.get_shape(), self.rhs.type.get_shape()
        if k != k2 or tuple(self.acc.type.get_shape()) != (m, n) or self.acc.type != self.result.type:
            raise VerifyException(f"tile.dot: [{m}x{k}] @ [{k2}x{n}] does not match the accumulator")
        if self.lhs.type.element_type != self.rhs.type.element_type:
            raise VerifyException("tile.dot: both operands must have one element type")
        if self.acc.type.element_type != f32:
            raise VerifyException("tile.dot: the accumulator is f32 (16-bit operands accumulate in f32)")


@irdl_op_definition
class DequantOp(IRDLOperation):
    """A tile of a quantized weight in f32: (code - zero) * scale. int8 codes are one per element; int4
    codes two per byte along the rows (row 2i in the low nibble of byte row i, values 0..15). Each scale
    (zero point) row covers rows / scale-rows consecutive result rows; without zeros the zero point is 0
    (int8) or 8 (int4). A dot reading it dequantizes in registers, in its K loop."""

    name = "tile.dequant"
    codes = operand_def(TensorType)
    scales = operand_def(TensorType)
    zeros = opt_operand_def(TensorType)
    result = result_def(TensorType)
    format = attr_def(StringAttr)
    traits = traits_def(Pure())
    assembly_format = "$codes `,` $scales (`,` $zeros^)? attr-dict `:` functional-type(operands, results)"

    @property
    def bits(self) -> int:
        return 8 if self.format.data == "int8" else 4

    @property
    def rows_per_scale(self) -> int:
        return self.result.type.get_shape()[0] // self.scales.type.get_shape()[0]

    def verify_(self):
        (rq, c), (rs, cs) = self.codes.type.get_shape(), self.scales.type.get_shape()
        rows, cols = self.result.type.get_shape()
        if self.format.data not in ("int8", "int4") or rows != rq * (8 // self.bits) or cols != c or cs != c:
            raise VerifyException(f"tile.dequant: {self.format.data} codes [{rq}x{c}] do not give [{rows}x{cols}]")
        if rows % rs or (self.zeros is not None and tuple(self.zeros.type.get_shape()) != (rs, cs)):
            raise VerifyException("tile.dequant: scale rows must divide the result rows; zero points are shaped like them")


@irdl_op_definition
class ReduceOp(IRDLOperation):
    """Reduce a tile along `axis` over its first `extent` elements (the rest is padding); `argmax`
    gives the (i64) position of the first maximum."""

    name = "tile.reduce"
    operand = operand_def(TensorType)
    result = result_def(TensorType)
    kind = attr_def(StringAttr)
    axis = attr_def(IntegerAttr)
    extent = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operand attr-dict `:` type($operand) `->` type($result)"

    def verify_(self):
        if self.kind.data not in REDUCTIONS:
            raise VerifyException(f"tile.reduce: kind must be one of {REDUCTIONS}")
        shape = list(self.operand.type.get_shape())
        shape[self.axis.value.data] = 1
        if shape != list(self.result.type.get_shape()):
            raise VerifyException("tile.reduce: the reduced axis must become 1")


@irdl_op_definition
class FullOp(IRDLOperation):
    name = "tile.full"
    value = attr_def(FloatAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$value attr-dict `:` type($result)"


@irdl_op_definition
class IotaOp(IRDLOperation):
    """offset + the index along `axis`, as an integer tile (for masks)."""

    name = "tile.iota"
    offset = operand_def(IndexType)
    result = result_def(TensorType)
    axis = attr_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$offset attr-dict `:` type($result)"


Tile = Dialect(
    "tile",
    [KernelOp, ReturnOp, LaunchOp, AllocOp, WeightOp, ProgramIdOp, TileCoordsOp, LoadOp, StoreOp, GatherOp, ScatterOp,
     ToIndexOp, ScanOp, DotOp, DequantOp, ReduceOp, FullOp, IotaOp],
)
