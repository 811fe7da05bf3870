"""numpy semantics of the `tile` dialect: a launch runs every program of its grid.

Buffers are numpy arrays in their element type's storage (bf16 as uint16 bit
patterns); loads widen floats to float32 and integers to int64, stores round
(or wrap) to the buffer's type.
Intermediate buffers start as NaN so a read before any write (a
memory-planning bug) poisons the results instead of passing silently.
Allocations with an arena offset are views of one byte arena, exactly as the
plan says.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    ReturnedValues,
    impl,
    impl_terminator,
    register_impls,
)

from llmc.dialects import tile
from llmc.dtypes import decode, encode, storage_dtype
from llmc.errors import InterpretError
from llmc.quantization import round_activations, weight_value

F32 = np.float32
ARENA_ATTR = "llmc.arena_bytes"


def block_indices(op, base: int, row: int, col: int, rows: int, cols: int):
    """Flat element indices of a block of a 2-D strided view, and which are inside the view."""
    (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
    r = row + np.arange(rows)[:, None]
    c = col + np.arange(cols)[None, :]
    valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    flat = base + r * s0 + c * s1
    return np.where(valid, flat, 0), valid


def grouped_coords(pid: int, rows: int, cols: int, group: int) -> tuple[int, int]:
    """Triton's grouped program order: `group` row tiles walk each column before moving on."""
    per_group = group * cols
    first_row = (pid // per_group) * group
    size = min(rows - first_row, group)
    return first_row + (pid % per_group) % size, (pid % per_group) // size


def _padded(values: np.ndarray, valid: np.ndarray, pad: float) -> np.ndarray:
    """Loaded values with the lanes outside the view set to the padding (false / 0 for masks and integers)."""
    if values.dtype == np.bool_:
        return np.where(valid, values, False)
    if values.dtype.kind == "i":
        return np.where(valid, values, 0).astype(np.int64)
    return np.where(valid, values, F32(pad)).astype(F32)


@register_impls
class TileFunctions(InterpreterFunctions):
    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.program_ids: tuple[int, ...] = ()
        self.arenas: dict[int, np.ndarray] = {}

    @impl(tile.LaunchOp)
    def run_launch(self, interpreter: Interpreter, op: tile.LaunchOp, args: PythonValues):
        kernel = interpreter.get_op_for_symbol(op.callee)
        for pid in itertools.product(*(range(g) for g in kernel.grid.get_values())):
            self.program_ids = pid
            interpreter.run_ssacfg_region(kernel.body, args, kernel.sym_name.data)
        return ()

    @impl_terminator(tile.ReturnOp)
    def run_return(self, interpreter: Interpreter, op: tile.ReturnOp, args: PythonValues):
        return ReturnedValues(()), ()

    @impl(tile.AllocOp)
    def run_alloc(self, interpreter: Interpreter, op: tile.AllocOp, args: PythonValues):
        shape = tuple(op.result.type.get_shape())
        stored = np.dtype(storage_dtype(op.result.type.element_type))
        count = int(np.prod(shape))
        if op.offset is None:
            return (np.full(count * stored.itemsize, 0xFF, dtype=np.uint8).view(stored).reshape(shape),)
        func_op = op.parent_op()
        arena = self.arenas.get(id(func_op))
        if arena is None:  # all-ones bytes: NaN in every float type
            arena = self.arenas[id(func_op)] = np.full(func_op.attributes[ARENA_ATTR].value.data, 0xFF, dtype=np.uint8)
        start = op.offset.value.data
        return (arena[start : start + count * stored.itemsize].view(stored).reshape(shape),)

    @impl(tile.WeightOp)
    def run_weight(self, interpreter: Interpreter, op: tile.WeightOp, args: PythonValues):
        name = op.weight_name.data
        value = weight_value(self.weights, name)
        if value is None:
            raise InterpretError(f"no value was given for weight '{name}'")
        value = np.asarray(value)
        return (np.ascontiguousarray(value if value.dtype.kind in "bi" else value.astype(F32)),)

    @impl(tile.ProgramIdOp)
    def run_program_id(self, interpreter: Interpreter, op: tile.ProgramIdOp, args: PythonValues):
        return (self.program_ids[op.axis.value.data],)

    @impl(tile.TileCoordsOp)
    def run_tile_coords(self, interpreter: Interpreter, op: tile.TileCoordsOp, args: PythonValues):
        return grouped_coords(args[0], op.rows.value.data, op.cols.value.data, op.group.value.data)

    @impl(tile.LoadOp)
    def run_load(self, interpreter: Interpreter, op: tile.LoadOp, args: PythonValues):
        buffer, base, row, col = args
        rows, cols = op.result.type.get_shape()
        flat, valid = block_indices(op, base, row, col, rows, cols)
        pad = -np.inf if op.padding is not None and op.padding.data == "neg_inf" else 0.0
        return (_padded(decode(buffer.reshape(-1)[flat]), valid, pad),)

    @impl(tile.GatherOp)
    def run_gather(self, interpreter: Interpreter, op: tile.GatherOp, args: PythonValues):
        buffer, base, rows, col = args
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        picked = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = (picked < -height) | (picked >= height)
        if bad.any():
            raise InterpretError(f"index {int(picked[bad][0])} is out of range for {height} rows "
                                 f"(tile.gather in @{_kernel_of(op).sym_name.data})")
        r = np.where(picked < 0, picked + height, picked)[:, None]
        c = col + np.arange(op.result.type.get_shape()[1])[None, :]
        valid = (c >= 0) & (c < width) & np.ones_like(r, dtype=bool)
        flat = np.where(valid, base + r * s0 + c * s1, 0)
        return (_padded(decode(buffer.reshape(-1)[flat]), valid, 0.0),)

    @impl(tile.ScatterOp)
    def run_scatter(self, interpreter: Interpreter, op: tile.ScatterOp, args: PythonValues):
        value, buffer, base, rows, first, col = args
        (height, width), (s0, s1) = op.shape.get_values(), op.strides.get_values()
        count, (tile_rows, cols) = op.count.value.data, op.value.type.get_shape()
        live = first + np.arange(tile_rows) < count
        picked = np.asarray(rows, dtype=np.int64).reshape(-1)
        bad = live & ((picked < -height) | (picked >= height))
        if bad.any():
            raise InterpretError(f"index {int(picked[bad][0])} is out of range for {height} rows "
                                 f"(tile.scatter in @{_kernel_of(op).sym_name.data})")
        r = np.where(picked < 0, picked + height, picked)[:, None]
        c = col + np.arange(cols)[None, :]
        valid = (c >= 0) & (c < width) & live[:, None]
        target = buffer.reshape(-1)
        target[(base + r * s0 + c * s1)[valid]] = encode(np.broadcast_to(value, (tile_rows, cols))[valid], target.dtype)
        return ()

    @impl(tile.ToIndexOp)
    def run_to_index(self, interpreter: Interpreter, op: tile.ToIndexOp, args: PythonValues):
        return (int(np.asarray(args[0]).reshape(-1)[0]),)

    @impl(tile.ScanOp)
    def run_scan(self, interpreter: Interpreter, op: tile.ScanOp, args: PythonValues):
        return (np.cumsum(args[0], axis=op.axis.value.data).astype(args[0].dtype),)

    @impl(tile.StoreOp)
    def run_store(self, interpreter: Interpreter, op: tile.StoreOp, args: PythonValues):
        value, buffer, base, row, col = args
        rows, cols = op.value.type.get_shape()
        flat, valid = block_indices(op, base, row, col, rows, cols)
        target = buffer.reshape(-1)
        if not np.shares_memory(target, buffer):
            raise InterpretError("tile.store into a non-contiguous buffer")
        target[flat[valid]] = encode(np.broadcast_to(value, (rows, cols))[valid], target.dtype)
        return ()

    @impl(tile.DotOp)
    def run_dot(self, interpreter: Interpreter, op: tile.DotOp, args: PythonValues):
        lhs, rhs, acc = args  # 16-bit operands hold exact values: f32 products, f32 accumulation
        if op.activations is not None:  # the K tile starts at a multiple of 32: its blocks are the linear's
            lhs = round_activations(lhs)
        return ((acc + lhs.astype(F32) @ rhs.astype(F32)).astype(F32),)

    @impl(tile.DequantOp)
    def run_dequant(self, interpreter: Interpreter, op: tile.DequantOp, args: PythonValues):
        codes = np.asarray(args[0]).astype(np.int64)
        if op.bits == 4:  # byte row i holds rows 2i (low nibble) and 2i + 1
            codes = np.stack([codes & 15, (codes >> 4) & 15], axis=1).reshape(-1, codes.shape[1])
        zero = args[2] if op.zeros is not None else (8.0 if op.bits == 4 else 0.0)
        expand = lambda a: np.repeat(np.asarray(a, dtype=F32), op.rows_per_scale, axis=0)  # noqa: E731
        zero = expand(zero) if op.zeros is not None else F32(zero)
        return (((codes.astype(F32) - zero) * expand(args[1])).astype(F32),)

    @impl(tile.ReduceOp)
    def run_reduce(self, interpreter: Interpreter, op: tile.ReduceOp, args: PythonValues):
        axis, extent = op.axis.value.data, op.extent.value.data
        part = np.take(args[0], np.arange(extent), axis=axis)
        if op.kind.data == "argmax":
            return (np.argmax(part, axis=axis, keepdims=True).astype(np.int64),)
        fn = np.sum if op.kind.data == "sum" else np.max
        result = fn(part, axis=axis, keepdims=True)
        return (result.astype(F32) if result.dtype.kind == "f" else result,)

    @impl(tile.FullOp)
    def run_full(self, interpreter: Interpreter, op: tile.FullOp, args: PythonValues):
        return (np.full(tuple(op.result.type.get_shape()), op.value.value.data, dtype=F32),)

    @impl(tile.IotaOp)
    def run_iota(self, interpreter: Interpreter, op: tile.IotaOp, args: PythonValues):
        shape = tuple(op.result.type.get_shape())
        axis = op.axis.value.data
        index = np.arange(shape[axis], dtype=np.int64).reshape([-1 if i == axis else 1 for i in range(2)])
        return (np.broadcast_to(args[0] + index, shape).copy(),)


def _kernel_of(op) -> tile.KernelOp:
    kernel = op.parent_op()
    while not isinstance(kernel, tile.KernelOp):
        kernel = kernel.parent_op()
    return kernel
