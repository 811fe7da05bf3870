"""Element types: what llmc accepts, how many bytes they take, how values round to them.

Floats (f32, bf16, f16), integers (i64, i32: token ids, positions, indices)
and i1 (bool masks). Graph and tile values of a 16-bit float type hold values
that type can represent; the numpy interpreters compute floats in float32 and
round a result to its element type (round to nearest even), which is what
eager PyTorch does per op. Integers compute in int64 (an i32 result wraps to
32 bits, as torch's does); a float converted to an integer truncates toward
zero. Buffers of bfloat16 are stored by the tile interpreter as their uint16
bit patterns, so arena aliasing is byte-exact.
"""

from __future__ import annotations

import numpy as np
import torch
from xdsl.dialects.builtin import bf16, f16, f32, i1, i8, i32, i64
from xdsl.ir import Attribute

FLOAT_ELEMENTS = {torch.float32: f32, torch.bfloat16: bf16, torch.float16: f16}
INTEGER_ELEMENTS = {torch.int64: i64, torch.int32: i32}
ELEMENTS = {**FLOAT_ELEMENTS, **INTEGER_ELEMENTS, torch.bool: i1}
TORCH_DTYPES = {**{element: dtype for dtype, element in ELEMENTS.items()}, i8: torch.int8}  # i8: weight codes only
BYTES = {f32: 4, bf16: 2, f16: 2, i1: 1, i64: 8, i32: 4, i8: 1}  # i8: quantized weight codes
LOW_PRECISION = (bf16, f16)


def element_of(dtype: torch.dtype) -> Attribute | None:
    """The IR element type of a torch dtype llmc accepts, else None."""
    return ELEMENTS.get(dtype)


def is_float(element: Attribute) -> bool:
    return element in FLOAT_ELEMENTS.values()


def is_integer(element: Attribute) -> bool:
    return element in (i64, i32)


def element_bytes(element: Attribute) -> int:
    if element not in BYTES:
        raise ValueError(f"llmc has no storage size for element type {element}")
    return BYTES[element]


def is_low_precision(element: Attribute) -> bool:
    return element in LOW_PRECISION


def torch_dtype(element: Attribute) -> torch.dtype:
    return TORCH_DTYPES[element]


def element_name(element: Attribute) -> str:
    """How a user knows the type: 'bfloat16', 'float32'."""
    return str(TORCH_DTYPES.get(element, element)).removeprefix("torch.")


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as the interpreters' numpy form: float32 values (16-bit floats widen exactly), integers
    and bool masks as they are."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, round to nearest even (NaN stays a quiet NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns → float32 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def round_to(values: np.ndarray, element: Attribute) -> np.ndarray:
    """Values computed for a result of type `element` in its interpreter form: floats rounded to
    `element` and widened back to float32, integers as int64 (i32 wrapped), masks as bool."""
    if element == i1:
        return np.asarray(values).astype(np.bool_)
    if element == i64:
        return _to_int64(values)
    if element == i32:
        return _to_int64(values).astype(np.int32).astype(np.int64)
    if element == bf16:
        return bf16_values(bf16_bits(values))
    if element == f16:
        return np.asarray(values, dtype=np.float32).astype(np.float16).astype(np.float32)
    return values


def _to_int64(values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = np.trunc(values)  # torch's float -> integer conversion truncates toward zero
    return values.astype(np.int64)


STORAGE = {f32: np.float32, f16: np.float16, bf16: np.uint16, i1: np.bool_, i64: np.int64, i32: np.int32, i8: np.int8}


def storage_dtype(element: Attribute) -> type:
    """The numpy dtype the tile interpreter stores `element` buffers in (bf16 as its bit patterns)."""
    return STORAGE[element]


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored buffer contents → interpreter values: float32, int64, or bool masks."""
    if stored.dtype == np.uint16:
        return bf16_values(stored)
    if stored.dtype == np.float16:
        return stored.astype(np.float32)
    if stored.dtype == np.int32:
        return stored.astype(np.int64)
    return stored


def encode(values: np.ndarray, stored: np.dtype) -> np.ndarray:
    """float32 values → the contents of a buffer stored as `stored`, rounded to nearest even."""
    if stored == np.uint16:
        return bf16_bits(values)
    if np.dtype(stored).kind == "i":
        return _to_int64(values).astype(stored)
    return np.asarray(values).astype(stored)
