"""Random small programs for differential fuzzing, built by hypothesis strategies (so that a failure
shrinks to a small program), and the torch module that runs one in eager.

A `Program` is plain data: its inputs (shape, dtype, bound for integer ids), a list of `Step`s over a
pool of values (the inputs, then each step's result) and the values it returns. Its repr is Python, so
a shrunk failure pastes into tests/fuzz/test_regressions.py as it is. The ops are the ones the importer
takes, in the shapes that break kernels: sizes of 1, odd sizes, broadcasting, views of every kind,
reductions over any dim, norms, products with epilogues, attention variants, integer index ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

SIZES = (1, 2, 3, 4, 5, 7, 8, 16, 17)
MAX_NUMEL = 4096


@dataclass(frozen=True)
class Input:
    shape: tuple[int, ...]
    dtype: str = "f32"  # f32, i64 (ids in [0, high)), b8 (an attention mask, first column set)
    high: int = 0


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[int, ...]  # operand positions in the value pool
    params: tuple = ()


@dataclass(frozen=True)
class Program:
    inputs: tuple[Input, ...]
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Value:
    shape: tuple[int, ...]
    dtype: str
    high: int = 0  # ids: every element is below it
    fresh: bool = False  # an input as drawn (random floats: no ties, for argmax)


UNARY = {
    "relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "neg": torch.neg, "abs": torch.abs, "sin": torch.sin,
    "cos": torch.cos, "exp_tanh": lambda x: torch.exp(torch.tanh(x)), "sqrt_abs": lambda x: torch.sqrt(x.abs()),
    "rsqrt_abs1": lambda x: torch.rsqrt(x.abs() + 1), "square": lambda x: x * x, "scale": lambda x: x * -1.5,
    "shift": lambda x: x + 0.25, "recip1": lambda x: 1.0 / (x.abs() + 1.0), "pow2": lambda x: torch.pow(x, 2),
}
BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div1": lambda a, b: a / (b.abs() + 1.0),
    "maximum": torch.maximum, "minimum": torch.minimum, "where_gt": lambda a, b: torch.where(a > b, a, b),
}
REDUCE = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax}  # amin: not imported (UnsupportedOpError)


def numel(shape) -> int:
    return math.prod(shape)


# --- builders: (draw, pool) -> (Step, result Value) or None when the pool has nothing they take -------------

class NoOperand(Exception):
    """The pool has no value this op takes: the program draws another op."""


def _pick(draw, pool: list[Value], ok) -> int:
    choices = [i for i, v in enumerate(pool) if ok(v)]
    if not choices:
        raise NoOperand
    return draw(st.sampled_from(choices))


def _float(v: Value) -> bool:
    return v.dtype == "f32"


def _size(draw) -> int:
    return draw(st.sampled_from(SIZES))


def _new_input(pool: list[Value], inputs: list[Input], spec: Input) -> int:
    """A fresh program input; inputs come first in the pool, so later values shift by one."""
    inputs.append(spec)
    return -len(inputs)  # resolved by Program assembly: see `programs`


def b_unary(draw, pool, inputs):
    i = _pick(draw, pool, _float)
    return Step("unary", (i,), (draw(st.sampled_from(sorted(UNARY))),)), pool[i]


def b_binary(draw, pool, inputs):
    i = _pick(draw, pool, _float)
    a = pool[i]
    shape = a.shape
    partners = [j for j, v in enumerate(pool) if _float(v) and _broadcasts_to(v.shape, shape)]
    if partners and draw(st.booleans()):
        j = draw(st.sampled_from(partners))
    else:  # a new input of a shape that broadcasts: dims kept or 1, leading dims maybe dropped
        drop = draw(st.integers(0, len(shape)))
        kept = tuple(s if draw(st.booleans()) else 1 for s in shape[drop:])
        j = _new_input(pool, inputs, Input(kept))
    swap = draw(st.booleans())
    return Step("binary", (j, i) if swap else (i, j), (draw(st.sampled_from(sorted(BINARY))),)), Value(shape, "f32")


def _broadcasts_to(small, big) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(small[::-1], big[::-1]))


def _permute(draw, shape):
    perm = tuple(draw(st.permutations(range(len(shape)))))
    return (perm,), [shape[p] for p in perm]


def _transpose(draw, shape):
    a, b = draw(st.integers(0, len(shape) - 1)), draw(st.integers(0, len(shape) - 1))
    out = list(shape)
    out[a], out[b] = shape[b], shape[a]
    return (a, b), out


def _merge(draw, shape):
    d = draw(st.integers(0, len(shape) - 2))
    return (d,), shape[:d] + [shape[d] * shape[d + 1]] + shape[d + 2:]


def _split(draw, shape):
    d = draw(st.sampled_from([k for k, s in enumerate(shape) if s in (4, 8, 16)]))
    return (d,), shape[:d] + [2, shape[d] // 2] + shape[d + 1:]


def _select(draw, shape):
    d = draw(st.integers(0, len(shape) - 1))
    return (d, draw(st.integers(0, shape[d] - 1))), shape[:d] + shape[d + 1:]


def _slice(draw, shape):
    d = draw(st.integers(0, len(shape) - 1))
    start = draw(st.integers(0, shape[d] - 1))
    stop = draw(st.integers(start + 1, shape[d]))
    step = draw(st.sampled_from((1, 1, 2, 3)))
    return (d, start, stop, step), shape[:d] + [len(range(start, stop, step))] + shape[d + 1:]


def _unsqueeze(draw, shape):
    d = draw(st.integers(0, len(shape)))
    return (d,), shape[:d] + [1] + shape[d:]


def _squeeze(draw, shape):
    d = draw(st.sampled_from([k for k, s in enumerate(shape) if s == 1]))
    return (d,), shape[:d] + shape[d + 1:]


def _expand(draw, shape):
    d = draw(st.sampled_from([k for k, s in enumerate(shape) if s == 1]))
    size = _size(draw)
    return (d, size), shape[:d] + [size] + shape[d + 1:]


VIEW_SHAPES = {  # kind -> (applies to this shape?, draw params and the result shape)
    "permute": (lambda s: len(s) >= 2, _permute), "transpose": (lambda s: len(s) >= 2, _transpose),
    "merge": (lambda s: len(s) >= 2, _merge), "select": (lambda s: len(s) >= 2, _select),
    "split": (lambda s: any(n in (4, 8, 16) for n in s), _split), "slice": (lambda s: len(s) >= 1, _slice),
    "unsqueeze": (lambda s: True, _unsqueeze), "squeeze": (lambda s: 1 in s, _squeeze),
    "expand": (lambda s: 1 in s, _expand), "flatten": (lambda s: True, lambda draw, s: ((), [numel(s)])),
}


def b_view(draw, pool, inputs):
    i = _pick(draw, pool, lambda v: v.dtype != "b8")
    v = pool[i]
    shape = list(v.shape)
    kind = draw(st.sampled_from([k for k, (applies, _) in VIEW_SHAPES.items() if applies(shape)]))
    params, out = VIEW_SHAPES[kind][1](draw, shape)
    if numel(out) > MAX_NUMEL or len(out) > 5:
        return None
    return Step(kind, (i,), params), Value(tuple(out), v.dtype, v.high)


def b_cat(draw, pool, inputs):
    # llmc refuses (UnsupportedOpError) a concat along a dim other than the last two
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 2)
    shape = list(pool[i].shape)
    d = draw(st.sampled_from((len(shape) - 2, len(shape) - 1)))
    other = shape[:d] + [_size(draw)] + shape[d + 1:]
    j = _new_input(pool, inputs, Input(tuple(other)))
    out = shape[:d] + [shape[d] + other[d]] + shape[d + 1:]
    if numel(out) > MAX_NUMEL:
        return None
    return Step("cat", (i, j), (d,)), Value(tuple(out), "f32")


def b_reduce(draw, pool, inputs):
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 1)
    shape = list(pool[i].shape)
    d = draw(st.integers(-len(shape), len(shape) - 1))
    keep = draw(st.booleans())
    out = shape.copy()
    if keep:
        out[d] = 1
    else:
        del out[d]
    return Step("reduce", (i,), (draw(st.sampled_from(sorted(REDUCE))), d, keep)), Value(tuple(out), "f32")


def b_row(draw, pool, inputs):
    """softmax, log_softmax and cumsum over any dim; layer_norm and an RMS norm over the last."""
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 1)
    shape = pool[i].shape
    kind = draw(st.sampled_from(("softmax", "log_softmax", "cumsum", "layer_norm", "rms_norm")))
    d = draw(st.integers(-len(shape), len(shape) - 1)) if kind in ("softmax", "log_softmax", "cumsum") else -1
    affine = draw(st.booleans())
    return Step(kind, (i,), (d, affine, shape[-1])), Value(shape, "f32")


def b_linear(draw, pool, inputs):
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 1)
    shape = pool[i].shape
    n = _size(draw)
    kind = draw(st.sampled_from(("linear", "linear_bias", "matmul_weight")))
    out = shape[:-1] + (n,)
    if numel(out) > MAX_NUMEL:
        return None
    return Step(kind, (i,), (n, shape[-1])), Value(out, "f32")


def b_bmm(draw, pool, inputs):
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 2)
    shape = pool[i].shape
    n = _size(draw)
    j = _new_input(pool, inputs, Input(shape[:-2] + (shape[-1], n)))
    out = shape[:-1] + (n,)
    if numel(out) > MAX_NUMEL:
        return None
    return Step("bmm", (i, j), ()), Value(out, "f32")


def b_attention(draw, pool, inputs):
    variant = draw(st.sampled_from(("plain", "causal", "masked", "gqa", "decode")))
    b, h, d = draw(st.sampled_from((1, 2))), draw(st.sampled_from((1, 2, 4))), draw(st.sampled_from((4, 8, 16)))
    hkv = draw(st.sampled_from([k for k in (1, 2, 4) if h % k == 0])) if variant == "gqa" else h
    tk = _size(draw)
    tq = 1 if variant == "decode" else tk if variant == "causal" else _size(draw)
    q = _new_input(pool, inputs, Input((b, h, tq, d)))
    k = _new_input(pool, inputs, Input((b, hkv, tk, d)))
    v = _new_input(pool, inputs, Input((b, hkv, tk, d)))
    args = (q, k, v)
    if variant == "masked":
        args += (_new_input(pool, inputs, Input((tq, tk), "b8")),)
    return Step("attention", args, (variant,)), Value((b, h, tq, d), "f32")


def b_embedding(draw, pool, inputs):
    usable = [i for i, v in enumerate(pool) if v.dtype == "i64" and v.high > 0 and numel(v.shape) * 16 <= MAX_NUMEL]
    ids = draw(st.sampled_from(usable)) if usable and draw(st.booleans()) else None
    if ids is None:
        vocab = _size(draw) + 1
        shape = tuple(_size(draw) for _ in range(draw(st.integers(1, 2))))
        ids = _new_input(pool, inputs, Input(shape, "i64", vocab))
        vocab_of = vocab
    else:
        vocab_of = pool[ids].high
    width = draw(st.sampled_from((1, 3, 8, 16)))
    shape = inputs[-ids - 1].shape if ids < 0 else pool[ids].shape
    return Step("embedding", (ids,), (vocab_of, width)), Value(tuple(shape) + (width,), "f32")


def b_index(draw, pool, inputs):
    """torch.gather and index_select with run-time indices in range."""
    i = _pick(draw, pool, lambda v: _float(v) and len(v.shape) >= 1)
    shape = list(pool[i].shape)
    d = draw(st.integers(0, len(shape) - 1))
    if draw(st.booleans()):
        index = shape[:d] + [_size(draw)] + shape[d + 1:]
        j = _new_input(pool, inputs, Input(tuple(index), "i64", shape[d]))
        return Step("gather", (i, j), (d,)), Value(tuple(index), "f32")
    length = _size(draw)
    j = _new_input(pool, inputs, Input((length,), "i64", shape[d]))
    out = shape[:d] + [length] + shape[d + 1:]
    if numel(out) > MAX_NUMEL:
        return None
    return Step("index_select", (i, j), (d,)), Value(tuple(out), "f32")


def b_argmax(draw, pool, inputs):
    i = _pick(draw, pool, lambda v: v.fresh and len(v.shape) >= 1)
    shape = list(pool[i].shape)
    d = draw(st.integers(0, len(shape) - 1))
    return Step("argmax", (i,), (d,)), Value(tuple(shape[:d] + shape[d + 1:]), "i64", shape[d])


BUILDERS = {
    "unary": b_unary, "binary": b_binary, "view": b_view, "cat": b_cat, "reduce": b_reduce, "row": b_row,
    "linear": b_linear, "bmm": b_bmm, "attention": b_attention, "embedding": b_embedding, "index": b_index,
    "argmax": b_argmax,
}


KINDS = (*BUILDERS, "view", "view", "binary")  # views and broadcasts are where tiles go wrong: drawn more


@st.composite
def programs(draw, max_steps: int = 5, kinds: tuple[str, ...] = KINDS) -> Program:
    """A random program. Inputs a step creates are numbered as they come; the pool is renumbered at the
    end so that inputs come first (value k < len(inputs) is input k)."""
    rank = draw(st.integers(1, 4))
    first = Input(tuple(_size(draw) for _ in range(rank)))
    inputs: list[Input] = [first]
    pool: list[Value] = [Value(first.shape, "f32", fresh=True)]
    refs: list[tuple] = [("in", 0)]  # pool position -> ("in", input k) or ("step", step k)
    steps: list[tuple[str, tuple, tuple]] = []
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(kinds))
        before = len(inputs)
        try:
            built = BUILDERS[kind](draw, pool, inputs)
        except NoOperand:
            built = None
        if built is None:
            del inputs[before:]
            continue
        step, value = built
        for k in range(before, len(inputs)):  # new inputs join the pool too
            spec = inputs[k]
            pool.append(Value(spec.shape, spec.dtype, spec.high, fresh=spec.dtype == "f32"))
            refs.append(("in", k))
        args = tuple(refs[a] if a >= 0 else ("in", -a - 1) for a in step.args)
        steps.append((step.op, args, step.params))
        pool.append(value)
        refs.append(("step", len(steps) - 1))
    last = len(refs) - 1
    extra = draw(st.lists(st.integers(0, last), max_size=2))
    outputs = tuple(dict.fromkeys([last, *extra]))
    number = {("in", k): k for k in range(len(inputs))}
    number.update({("step", k): len(inputs) + k for k in range(len(steps))})
    return Program(tuple(inputs), tuple(Step(op, tuple(number[a] for a in args), params) for op, args, params in steps),
                   tuple(number[refs[o]] for o in outputs))


# --- running a program in eager ---------------------------------------------------------------------------


class ProgramModule(torch.nn.Module):
    """A program as a torch module; its weights are drawn from `seed`."""

    def __init__(self, program: Program, seed: int = 0):
        super().__init__()
        self.program = program
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.nn.ParameterDict()
        for k, step in enumerate(program.steps):
            for name, shape in _weight_shapes(step):
                self.weights[f"s{k}_{name}"] = torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.5)

    def forward(self, *inputs):
        values = list(inputs)
        for k, step in enumerate(self.program.steps):
            w = {name: self.weights[f"s{k}_{name}"] for name, _ in _weight_shapes(step)}
            values.append(run_step(step, [values[a] for a in step.args], w))
        return tuple(values[o] for o in self.program.outputs)


def _weight_shapes(step: Step) -> list[tuple[str, tuple[int, ...]]]:
    op, p = step.op, step.params
    if op in ("linear", "linear_bias"):
        return [("weight", (p[0], p[1]))] + ([("bias", (p[0],))] if op == "linear_bias" else [])
    if op == "matmul_weight":
        return [("weight", (p[1], p[0]))]
    if op in ("layer_norm", "rms_norm") and p[1]:
        return [("gamma", (p[2],))] + ([("beta", (p[2],))] if op == "layer_norm" else [])
    if op == "embedding":
        return [("table", p)]
    return []


def _rms_norm(x: torch.Tensor, w: dict) -> torch.Tensor:
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return normed * w["gamma"] if "gamma" in w else normed


STEPS = {  # op -> f(operands, params, weights)
    "unary": lambda a, p, w: UNARY[p[0]](a[0]),
    "binary": lambda a, p, w: BINARY[p[0]](*a),
    "cat": lambda a, p, w: torch.cat(a, dim=p[0]),
    "reduce": lambda a, p, w: REDUCE[p[0]](a[0], dim=p[1], keepdim=p[2]),
    "softmax": lambda a, p, w: torch.softmax(a[0], p[0]),
    "log_softmax": lambda a, p, w: torch.log_softmax(a[0], p[0]),
    "cumsum": lambda a, p, w: torch.cumsum(a[0], p[0]),
    "layer_norm": lambda a, p, w: F.layer_norm(a[0], (p[2],), w.get("gamma"), w.get("beta")),
    "rms_norm": lambda a, p, w: _rms_norm(a[0], w),
    "linear": lambda a, p, w: F.linear(a[0], w["weight"]),
    "linear_bias": lambda a, p, w: F.linear(a[0], w["weight"], w["bias"]),
    "matmul_weight": lambda a, p, w: a[0] @ w["weight"],
    "bmm": lambda a, p, w: torch.matmul(*a),
    "attention": lambda a, p, w: _attention(p[0], *a),
    "embedding": lambda a, p, w: F.embedding(a[0], w["table"]),
    "gather": lambda a, p, w: torch.gather(a[0], p[0], a[1]),
    "index_select": lambda a, p, w: torch.index_select(a[0], p[0], a[1]),
    "argmax": lambda a, p, w: torch.argmax(a[0], dim=p[0]),
}


def run_step(step: Step, args: list[torch.Tensor], w: dict) -> torch.Tensor:
    if step.op in VIEWS:
        return VIEWS[step.op](args[0], *step.params)
    return STEPS[step.op](args, step.params, w)


def _attention(variant: str, q, k, v, mask=None):
    if variant == "masked":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=variant == "causal", enable_gqa=variant == "gqa")


VIEWS = {
    "permute": lambda x, perm: x.permute(*perm), "transpose": lambda x, a, b: x.transpose(a, b),
    "merge": lambda x, d: x.reshape(*x.shape[:d], x.shape[d] * x.shape[d + 1], *x.shape[d + 2:]),
    "split": lambda x, d: x.reshape(*x.shape[:d], 2, x.shape[d] // 2, *x.shape[d + 1:]),
    "select": lambda x, d, i: x.select(d, i), "slice": lambda x, d, a, b, s: x[(slice(None),) * d + (slice(a, b, s),)],
    "unsqueeze": lambda x, d: x.unsqueeze(d), "squeeze": lambda x, d: x.squeeze(d),
    "expand": lambda x, d, n: x.expand(*x.shape[:d], n, *x.shape[d + 1:]), "flatten": lambda x: x.flatten(),
}
def make_inputs(program: Program, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in program.inputs:
        if spec.dtype == "i64":
            tensors.append(torch.randint(0, spec.high, spec.shape, generator=generator))
        elif spec.dtype == "b8":
            mask = torch.rand(spec.shape, generator=generator) > 0.5
            mask[..., 0] = True  # no fully masked row: torch's result for one is NaN by convention only
            tensors.append(mask)
        else:
            tensors.append(torch.randn(spec.shape, generator=generator))
    return tensors


class Batch(torch.nn.Module):
    """Many programs as one model (one export, one build, one library): the outputs of each, in turn."""

    def __init__(self, programs: list[Program]):
        super().__init__()
        self.parts = torch.nn.ModuleList(ProgramModule(p, seed=k) for k, p in enumerate(programs))

    def forward(self, *flat):
        outputs, at = [], 0
        for part in self.parts:
            n = len(part.program.inputs)
            outputs.extend(part(*flat[at:at + n]))
            at += n
        return tuple(outputs)
