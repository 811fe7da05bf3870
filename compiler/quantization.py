"""Weight-only quantization: the formats, the numbers, and where quantized weights come from.

A quantized linear weight W [N, K] is stored as integer codes plus f32 scales
(and, for asymmetric int4, f32 zero points), one per output channel or per
group of G consecutive input channels:

    W[n, k] = (code[n, k] - zero[n, k // G]) * scale[n, k // G]

- int8: codes in [-127, 127], symmetric (zero 0), per output channel (G = K).
- int4: codes in [0, 15], two per byte along K (k even in the low nibble), G in
  {32, 64, 128} or per channel; symmetric (zero 8, codes 8 ± 7) or asymmetric
  (an integer zero point per group, stored as f32). Where G does not divide K
  the last group is partial: its scale covers the K mod G channels left.

Quantized weights are named after the float weight they come from
(`"lm_head.weight#int4g32.codes"`), so the `quantize` pass only rewrites IR:
whoever reads a weight by name (the interpreters, the backends) derives the
codes from the float weight on first use (`weight_value`). An IR dump that was
quantized replays with the same float weights.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from llmc.errors import PassOptionError

GROUPS = (32, 64, 128)
PARTS = ("codes", "scales", "zeros")
_BF16 = re.compile(r"^(?P<base>.+)#bf16(?P<t>t?)$")
_DERIVED = re.compile(r"^(?P<base>.+)#(?P<spec>int8|int4(?:g\d+|c)a?)(?P<t>t?)\.(?P<part>codes|scales|zeros)$")


@dataclass(frozen=True)
class QuantFormat:
    bits: int  # 8 or 4
    group: int = 0  # input channels per scale; 0 = per output channel
    symmetric: bool = True
    activations: str = "float"  # "int8": linears round their input to int8 per block of 32 (integer dot products)

    @staticmethod
    def parse(text: str) -> QuantFormat:
        """'int8', 'int4' (G = 32), 'int4:128', 'int4:64:asym', 'int4:channel'; ':a8' rounds the
        activations to int8 so products run as integer dot products."""
        parts = text.strip().lower().split(":")
        act8 = "a8" in parts[1:]
        parts = [p for p in parts if p != "a8"]
        kind, rest = parts[0], parts[1:]
        if kind not in ("int8", "int4"):
            raise PassOptionError(f"unknown quantization '{text}': use int8, int4, int4:G (G in 32, 64, 128, channel) "
                                  "and optionally :asym and :a8")
        if act8:
            base = QuantFormat.parse(":".join(parts))
            return QuantFormat(base.bits, base.group, base.symmetric, "int8")
        symmetric = True
        if rest and rest[-1] in ("sym", "asym"):
            symmetric = rest.pop() == "sym"
        if kind == "int8":
            if rest or not symmetric:
                raise PassOptionError(f"'{text}': int8 is symmetric and per output channel; it takes no group")
            return QuantFormat(8)
        group = 32
        if rest:
            if len(rest) > 1 or not (rest[0] == "channel" or rest[0].isdigit()):
                raise PassOptionError(f"bad int4 group in '{text}': use int4:32, int4:64, int4:128 or int4:channel")
            group = 0 if rest[0] == "channel" else int(rest[0])
        if group and group not in GROUPS:
            raise PassOptionError(f"int4 group {group} is not supported: use one of {', '.join(map(str, GROUPS))} or channel")
        return QuantFormat(4, group, symmetric)

    @property
    def tag(self) -> str:
        """The weight-name suffix: int8, int4g32, int4g128a (asymmetric), int4c (per channel)."""
        if self.bits == 8:
            return "int8"
        return f"int4{'c' if not self.group else f'g{self.group}'}{'' if self.symmetric else 'a'}"

    @staticmethod
    def from_tag(tag: str) -> QuantFormat:
        if tag == "int8":
            return QuantFormat(8)
        match = re.fullmatch(r"int4(?:g(\d+)|c)(a?)", tag)
        if match is None:
            raise ValueError(f"not a quantization tag: {tag}")
        return QuantFormat(4, int(match.group(1) or 0), not match.group(2))

    def describe(self) -> str:
        if self.bits == 8:
            return "int8, per channel" + (", int8 activations" if self.activations == "int8" else "")
        group = f"groups of {self.group}" if self.group else "per channel"
        act = ", int8 activations" if self.activations == "int8" else ""
        return f"int4, {group}, {'symmetric' if self.symmetric else 'asymmetric'}{act}"

    def group_size(self, k: int) -> int:
        return self.group or k

    def groups(self, k: int) -> int:
        """Scales per output channel; a K that G does not divide ends in a partial group."""
        return -(-k // self.group_size(k))

    def code_columns(self, k: int) -> int:
        """Bytes per output channel of the codes: K for int8, K/2 rounded up for int4."""
        return k if self.bits == 8 else (k + 1) // 2

    @property
    def default_zero(self) -> float:
        return 8.0 if self.bits == 4 else 0.0

    def bits_per_weight(self, k: int) -> float:
        """Storage per weight, scales and zero points included."""
        per_group = 32 * (1 if self.symmetric else 2)
        return self.bits + per_group * self.groups(k) / k


def quantize(weight: np.ndarray, fmt: QuantFormat) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """codes (int8 [N, code_columns]), scales (f32 [N, K/G]) and zeros (f32 [N, K/G], asymmetric only)."""
    w = np.asarray(weight, dtype=np.float32)
    n, k = w.shape
    g = fmt.group_size(k)
    groups = -(-k // g)  # K not a multiple of G: the last group is partial (zero-padded to find its scale)
    blocks = np.zeros((n, groups * g), np.float32)
    blocks[:, :k] = w
    blocks = blocks.reshape(n, groups, g)
    if fmt.bits == 8:
        scale = np.abs(blocks).max(axis=2) / np.float32(127)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        codes = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int8).reshape(n, -1)[:, :k]
        return np.ascontiguousarray(codes), scale, None
    if fmt.symmetric:
        scale = np.abs(blocks).max(axis=2) / np.float32(7)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        zero = np.full_like(scale, fmt.default_zero)
    else:
        low, high = np.minimum(blocks.min(axis=2), 0), np.maximum(blocks.max(axis=2), 0)
        scale = ((high - low) / np.float32(15)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        zero = np.clip(np.rint(-low / scale), 0, 15).astype(np.float32)
    codes = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8).reshape(n, -1)[:, :k]
    return pack_nibbles(codes), scale, (None if fmt.symmetric else zero)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[N, K] codes 0..15 -> [N, ceil(K/2)] bytes, k even in the low nibble."""
    n, k = codes.shape
    padded = np.zeros((n, k + k % 2), dtype=np.uint8)
    padded[:, :k] = codes
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).view(np.int8)


def unpack_nibbles(packed: np.ndarray, k: int) -> np.ndarray:
    """The inverse of pack_nibbles: [..., ceil(K/2)] bytes -> [..., K] codes as f32."""
    raw = np.asarray(packed).view(np.uint8)
    pairs = np.stack([raw & 15, raw >> 4], axis=-1).reshape(*raw.shape[:-1], -1)
    return pairs[..., :k].astype(np.float32)


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, fmt: QuantFormat,
               k: int) -> np.ndarray:
    """The f32 weight [N, K] the codes stand for: (code - zero) * scale, one f32 rounding (the product)."""
    values = unpack_nibbles(codes, k) if fmt.bits == 4 else np.asarray(codes, dtype=np.float32)
    n = values.shape[0]
    groups = np.asarray(scales, dtype=np.float32).shape[1]
    g = fmt.group_size(k)
    zero = np.full((n, groups), fmt.default_zero, np.float32) if zeros is None else np.asarray(zeros, np.float32)
    expand = lambda a: np.repeat(a, g, axis=1)[:, :k]  # noqa: E731
    return ((values - expand(zero)) * expand(np.asarray(scales, np.float32))).astype(np.float32)


ACTIVATION_BLOCK = 32


def round_activations(x: np.ndarray) -> np.ndarray:
    """What a linear with int8 activations reads: x rounded to int8 per block of 32 along its last dim,
    d = max|x| / 127, x' = rint(x * (1 / d)) * d (f32; round half to even; a block of zeros stays zero),
    as llama.cpp's Q8_0 rounds its activations."""
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[-1]
    blocks = -(-k // ACTIVATION_BLOCK)
    padded = np.zeros((*x.shape[:-1], blocks * ACTIVATION_BLOCK), np.float32)
    padded[..., :k] = x
    grouped = padded.reshape(*x.shape[:-1], blocks, ACTIVATION_BLOCK)
    d = np.abs(grouped).max(axis=-1, keepdims=True) / np.float32(127)
    inverse = np.float32(1) / np.where(d > 0, d, np.float32(1))
    q = np.rint(grouped * inverse)
    return (q * d).astype(np.float32).reshape(padded.shape)[..., :k]


class Derived(NamedTuple):
    """What a quantized weight's name says: the float weight, the format, the part, and whether the codes
    are those of the float weight's transpose (a weight stored [K, N], read as x @ w)."""

    base: str
    format: QuantFormat
    part: str
    transposed: bool = False


def derived_name(base: str, fmt: QuantFormat, part: str, transposed: bool = False) -> str:
    return f"{base}#{fmt.tag}{'t' if transposed else ''}.{part}"


def parse_derived(name: str) -> Derived | None:
    match = _DERIVED.match(name)
    if match is None:
        return None
    return Derived(match.group("base"), QuantFormat.from_tag(match.group("spec")), match.group("part"),
                   bool(match.group("t")))


def bf16_name(base: str, transposed: bool = False) -> str:
    """The name of a float weight rounded to bf16 (`matmul-precision`), or of its transpose."""
    return f"{base}#bf16{'t' if transposed else ''}"


def weight_value(weights: MutableMapping, name: str):
    """The value of weight `name`; a quantized weight's codes / scales / zeros, or a weight rounded to bf16,
    are derived from its float weight on first use and kept in the mapping. None when neither exists."""
    if name in weights:
        return weights[name]
    rounded = _BF16.match(name)
    if rounded is not None and rounded.group("base") in weights:
        from xdsl.dialects.builtin import bf16

        from llmc.dtypes import round_to

        weight = np.asarray(weights[rounded.group("base")], dtype=np.float32)
        weights[name] = np.ascontiguousarray(round_to(weight.T if rounded.group("t") else weight, bf16))
        return weights[name]
    derived = parse_derived(name)
    if derived is None or derived.base not in weights:
        return None
    base, fmt, _, transposed = derived
    weight = np.asarray(weights[base], dtype=np.float32)
    codes, scales, zeros = quantize(weight.T if transposed else weight, fmt)
    for part, value in zip(PARTS, (codes, scales, zeros)):
        if value is not None:
            weights[derived_name(base, fmt, part, transposed)] = value
    return weights.get(name)
