"""Op → C template tables for the SIMD renderer: index arithmetic on `long`, pointwise
tile ops on vectors (`vf`, masks `vi`; see runtime.h)."""

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
}
# x ** c for the exponents models use, without powf.
POWERS = {2.0: "({0} * {0})", 1.0: "{0}", 0.5: "vsqrt({0})", -0.5: "vrsqrt({0})", 3.0: "({0} * {0} * {0})"}
GELU = {"tanh": "vgelu_tanh({0})", "none": "vgelu_erf({0})"}


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
