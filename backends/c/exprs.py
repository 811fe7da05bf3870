"""Op → C template tables for the SIMD renderer: index arithmetic on `long`, pointwise
tile ops on vectors of three kinds (see runtime.h): `vf` float lanes, `vl` int64 lanes
(integer tiles), `vi` mask lanes (-1 / 0, for i1 tiles). Tables are per operand kind."""

from __future__ import annotations

import math
import re

from xdsl.dialects import arith

from llmc.dialects import graph

INDEX_BINARY = {
    arith.AddiOp: "{0} + {1}",
    arith.SubiOp: "{0} - {1}",
    arith.MuliOp: "{0} * {1}",
    arith.DivSIOp: "{0} / {1}",
    arith.RemSIOp: "{0} % {1}",
    arith.MinSIOp: "({0} < {1} ? {0} : {1})",
    arith.MaxSIOp: "({0} > {1} ? {0} : {1})",
}

UNARY = {
    graph.NegOp: "-{0}",
    graph.ExpOp: "vexp({0})",
    graph.LogOp: "vlog({0})",
    graph.TanhOp: "vtanh({0})",
    graph.SqrtOp: "vsqrt({0})",
    graph.RsqrtOp: "vrsqrt({0})",
    graph.SigmoidOp: "vsigmoid({0})",
    graph.ReluOp: "vmax({0}, vsplat(0.0f))",
    graph.SiluOp: "({0} * vsigmoid({0}))",
    graph.SinOp: "vsin({0})",
    graph.CosOp: "vcos({0})",
    graph.AbsOp: "vabs({0})",
}
UNARY_INT = {graph.NegOp: "-{0}", graph.AbsOp: "vabs_l({0})", graph.NotOp: "~{0}"}
UNARY_MASK = {graph.NotOp: "~{0}"}
BINARY = {
    graph.AddOp: "{0} + {1}",
    graph.SubOp: "{0} - {1}",
    graph.MulOp: "{0} * {1}",
    graph.DivOp: "{0} / {1}",
    graph.PowOp: "vpow({0}, {1})",
    graph.MaximumOp: "vmax({0}, {1})",
    graph.MinimumOp: "vmin({0}, {1})",
    graph.EqOp: "{0} == {1}",
    graph.NeOp: "{0} != {1}",
    graph.LtOp: "{0} < {1}",
    graph.LeOp: "{0} <= {1}",
    graph.GtOp: "{0} > {1}",
    graph.GeOp: "{0} >= {1}",
    graph.FloorDivOp: "vfloor({0} / {1})",
    graph.RemOp: "({0} - vfloor({0} / {1}) * {1})",
}
BINARY_INT = {
    graph.AddOp: "{0} + {1}",
    graph.SubOp: "{0} - {1}",
    graph.MulOp: "{0} * {1}",
    graph.MaximumOp: "vmax_l({0}, {1})",
    graph.MinimumOp: "vmin_l({0}, {1})",
    graph.FloorDivOp: "vfloordiv_l({0}, {1})",
    graph.RemOp: "vrem_l({0}, {1})",
    graph.AndOp: "({0} & {1})",
    graph.OrOp: "({0} | {1})",
    graph.XorOp: "({0} ^ {1})",
    graph.EqOp: "LLMC_MASK_L({0} == {1})",
    graph.NeOp: "LLMC_MASK_L({0} != {1})",
    graph.LtOp: "LLMC_MASK_L({0} < {1})",
    graph.LeOp: "LLMC_MASK_L({0} <= {1})",
    graph.GtOp: "LLMC_MASK_L({0} > {1})",
    graph.GeOp: "LLMC_MASK_L({0} >= {1})",
}
BINARY_MASK = {
    graph.AndOp: "({0} & {1})",
    graph.OrOp: "({0} | {1})",
    graph.XorOp: "({0} ^ {1})",
    graph.EqOp: "~({0} ^ {1})",
    graph.NeOp: "({0} ^ {1})",
    graph.MaximumOp: "({0} | {1})",
    graph.MinimumOp: "({0} & {1})",
}
# graph.cast between vector kinds (float -> integer truncates toward zero, as torch does)
CASTS = {
    ("vf", "vl"): "__builtin_convertvector({0}, vl)",
    ("vl", "vf"): "__builtin_convertvector({0}, vf)",
    ("vi", "vl"): "(__builtin_convertvector({0}, vl) & 1)",
    ("vi", "vf"): "vsel({0}, vsplat(1.0f), vsplat(0.0f))",
    ("vl", "vi"): "LLMC_MASK_L({0} != 0)",
    ("vf", "vi"): "({0} != 0.0f)",
}
WHERE = {"vf": "vsel({0}, {1}, {2})", "vl": "vsel_l({0}, {1}, {2})", "vi": "vsel_b({0}, {1}, {2})"}
SPLAT = {"vf": "vsplat({0})", "vl": "vsplat_l({0})", "vi": "vsplat_b({0})"}
# 16-bit floats as their bit patterns (half.h converts)
C_TYPES = {"f32": "float", "i64": "int64_t", "i32": "int32_t", "i1": "uint8_t", "i8": "int8_t", "bf16": "uint16_t",
           "f16": "uint16_t"}
ACCESS = {"f32": "", "i64": "_l", "i32": "_i32", "i1": "_b", "bf16": "_bf16", "f16": "_f16"}  # llmc_load_vec / llmc_store_vec suffixes
HALF = ("bf16", "f16")
# x ** c for the exponents models use, without powf.
POWERS = {2.0: "({0} * {0})", 1.0: "{0}", 0.5: "vsqrt({0})", -0.5: "vrsqrt({0})", 3.0: "({0} * {0} * {0})"}
GELU = {"tanh": "vgelu_tanh({0})", "none": "vgelu_erf({0})"}


def literal(value: float | int, kind: str) -> str:
    """A scalar of a vector kind's lane type."""
    if kind == "vf":
        return float_literal(float(value))
    if kind == "vi":
        return "1" if value else "0"
    return f"INT64_C({int(value)})"


def float_literal(value: float) -> str:
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    text = repr(float(value))
    return text + "f" if ("." in text or "e" in text) else text + ".0f"


def c_identifier(name: str, prefix: str = "x") -> str:
    """A C identifier made only of [A-Za-z0-9_] from any model-supplied name."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if ident and not ident[0].isdigit() else f"{prefix}_{ident}"


def c_comment(text: str) -> str:
    """Text safe inside /* */: printable ASCII only, no comment delimiters."""
    clean = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return clean.replace("*/", "* /").replace("/*", "/ *").replace("\\", "/")
