"""Render a lowered module as one C translation unit with a single exported entry point.

    llmc_context *llmc_create(void *const *weights);        weights, arena, scratch
    int  llmc_forward(llmc_context *, void *const *inputs, void *const *outputs);
    void llmc_destroy(llmc_context *);

One forward call runs every kernel; contexts are independent, so two models
sharing one cached library never share state. Buffers keep their element
type (float, int64_t, int32_t, and bool as one byte); the forward returns 0,
or the code of the kernel that met an index out of range.

Weights enter as pointers (the caller keeps them alive); weight panels the
`swizzle` pass marked with `pack` are repacked here, at compile time, and
passed in their packed form. Intermediate buffers live in one arena laid out
by `plan-memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import ModuleOp, bf16
from xdsl.ir import BlockArgument

from llmc.backends.c.exprs import c_comment
from llmc.backends.c.kernel import KernelRenderer, arg_c_type, c_type, function_name
from llmc.backends.c.nest import element_key
from llmc.backends.c.plan import MAX_FUSED_ROWS, PAIR_K, PAIRS, PackSpec, dot_roles, plan_kernel, round_up
from llmc.dialects import tile
from llmc.dtypes import LOW_PRECISION, element_bytes, encode, storage_dtype
from llmc.errors import MalformedIRError
from llmc.passes.swizzle import weight_arguments
from llmc.quantization import ACTIVATION_BLOCK, weight_value
from llmc.target import host_has_amx_bf16, host_has_amx_int8, host_has_integer_dot

ARENA_ATTR = "llmc.arena_bytes"


@dataclass(frozen=True)
class WeightSlot:
    """One entry of the weights array llmc_init takes: a model weight, maybe packed. A 16-bit weight is
    passed as its bit patterns, or packed into f32 panels."""

    name: str
    pack: PackSpec | None = None
    element: object = None

    def materialise(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        value = np.asarray(weight_value(weights, self.name))
        array = np.ascontiguousarray(value, dtype=value.dtype if value.dtype.kind in "bi" else np.float32)
        if self.pack is not None:
            panels = pack_panels(array, self.pack)
            if self.pack.vnni:
                return vnni_panels(panels, self.pack.panel // 2, self.pack.vnni)
            if self.pack.half == PAIRS:
                return pair_panels(encode(panels, np.uint16))
            return encode(panels, storage_dtype(self.element)) if self.pack.half else panels
        return encode(array, storage_dtype(self.element)) if self.element in LOW_PRECISION else array


@dataclass
class CSource:
    text: str
    weights: list[WeightSlot]
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]
    launches: list[str] = field(default_factory=list)  # kernel of each launch, in order
    input_elements: list = field(default_factory=list)
    output_elements: list = field(default_factory=list)
    status_kernels: dict[int, str] = field(default_factory=dict)  # forward's status code -> kernel name
    # output -> input it is written into in place (a KV cache): the caller passes that input's storage
    output_aliases: dict[int, int] = field(default_factory=dict)


def pack_panels(array: np.ndarray, spec: PackSpec) -> np.ndarray:
    """The logical view (shape, strides from base) zero-padded and cut into K-major column panels."""
    flat = array.reshape(-1)[spec.base :]
    logical = np.lib.stride_tricks.as_strided(
        flat, shape=spec.shape, strides=tuple(s * flat.itemsize for s in spec.strides), writeable=False
    )
    rows, cols = spec.padded
    k, n = spec.shape
    whole = n // spec.panel
    panels = np.zeros((cols // spec.panel, rows, spec.panel), dtype=array.dtype)
    # one gather straight into the panels: a padded copy transposed afterwards was two passes, the second
    # across the whole weight with a short inner run (6x slower for a linear layer's transposed weight)
    panels[:whole, :k, :] = logical[:, : whole * spec.panel].reshape(k, whole, spec.panel).transpose(1, 0, 2)
    if n % spec.panel:
        panels[whole, :k, : n % spec.panel] = logical[:, whole * spec.panel :]
    return panels


def pair_panels(panels: np.ndarray) -> np.ndarray:
    """bf16 panels [panel, K, 32] -> the k-pair layout of matrix.h: per k pair, the 32 columns' two values."""
    count, rows, width = panels.shape
    pairs = panels.reshape(count, rows // 2, 2, width).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(pairs).reshape(count, rows, width)


def packed_arguments(kernel: tile.KernelOp, weight_args: set, lanes: int, bf16_dot: bool = False,
                     int8_tiles: bool = False) -> dict[int, PackSpec]:
    """Kernel arguments whose every use is one identical `pack`ed load: those get panels. A bf16 weight of
    prefill-sized products gets the k-pair layout of AMX / vdpbf16ps where `bf16_dot` says the build has them."""
    specs: dict[int, PackSpec] = {}
    for arg in kernel.body.block.args:
        if arg not in weight_args:
            continue
        loads = [u.operation for u in arg.uses]
        keys = {_pack_key(load, lanes) for load in loads}
        if len(keys) == 1 and None not in keys:
            base, shape, strides, panel, tile_shape = keys.pop()
            padded = (round_up(shape[0], tile_shape[0]), round_up(shape[1], tile_shape[1]))
            element = arg.type.element_type
            roles = [role for load in loads for role in dot_roles(load.results[0])]
            few_rows = bool(roles) and all(dot.lhs.type.get_shape()[0] <= MAX_FUSED_ROWS for dot, _ in roles)
            half = element_key(element) if element in LOW_PRECISION and few_rows else ""
            whole_k = tile_shape[0] % PAIR_K == 0 or tile_shape[0] >= shape[0]  # K tiles start on whole pairs tiles
            if bf16_dot and element == bf16 and roles and not few_rows and panel == 2 * lanes == 32 and whole_k:
                half, padded = PAIRS, (round_up(padded[0], PAIR_K), padded[1])
            specs[arg.index] = PackSpec(base, shape, strides, panel, padded, half, _vnni_codes(loads, lanes, int8_tiles))
    return specs


def _vnni_codes(loads: list, lanes: int, int8_tiles: bool) -> int:
    """The bits of codes whose every product has int8 activations and whole blocks of 32 k per tile, on a
    host with integer dot products (vpdpbusd, a few rows at a time and the rest one by one) or
    AMX int8 tiles (prefill); laid out for llmc_qdot_act8 (quant_amx.h); else 0."""
    dequants = []
    for load in loads:
        for use in load.results[0].uses:
            d = use.operation
            if not (isinstance(d, tile.DequantOp) and d.codes is load.results[0] and (d.zeros is None or d.bits == 4)):
                return 0
            dequants.append(d)
    if not dequants or not (int8_tiles or host_has_integer_dot(lanes)) or len({d.bits for d in dequants}) != 1:
        return 0
    for dot in (u.operation for d in dequants for u in d.result.uses):
        if not (isinstance(dot, tile.DotOp) and dot.activations is not None and dot.rhs.owner in dequants):
            return 0
        rows, k = dot.lhs.type.get_shape()
        if k % ACTIVATION_BLOCK:
            return 0
    return dequants[0].bits


def vnni_panels(panels: np.ndarray, lanes: int, bits: int) -> np.ndarray:
    """Regular panels -> the integer-dot layout, for each vector of `lanes` columns 4 bytes per column: int8
    codes k0..k0+3 per 4 k; int4 (a byte per k pair and column, k even low) k0..k0+3 in the low nibbles and
    k0+4..k0+7 in the high ones per 8 k."""
    if bits == 8:
        count, rows, width = panels.shape
        grouped = panels.reshape(count, rows // 4, 4, width // lanes, lanes)  # [panel, k/4, t, vector, lane]
        return np.ascontiguousarray(grouped.transpose(0, 1, 3, 4, 2)).reshape(count, rows, width)
    raw = panels.view(np.uint8)
    count, pairs, width = raw.shape
    codes = np.stack([raw & 15, raw >> 4], axis=2).reshape(count, pairs * 2, width)  # [panel, k, column]
    k8 = codes.reshape(count, pairs // 4, 2, 4, width // lanes, lanes)  # [panel, k/8, nibble, t, vector, lane]
    packed = k8[:, :, 0] | (k8[:, :, 1] << 4)  # [panel, k/8, t, vector, lane]
    return np.ascontiguousarray(packed.transpose(0, 1, 3, 4, 2)).reshape(count, pairs, width).view(np.int8)


def _pack_key(load, lanes: int):
    if not isinstance(load, tile.LoadOp) or load.pack is None or not isinstance(load.base.owner, arith.ConstantOp):
        return None
    panel = load.pack.value.data
    tile_shape = tuple(load.result.type.get_shape())
    if panel % lanes or tile_shape[1] % panel:
        return None
    base = load.base.owner.value.value.data
    return base, tuple(load.shape.get_values()), tuple(load.strides.get_values()), panel, tile_shape


class ModuleRenderer:
    def __init__(self, module: ModuleOp, lanes: int, bf16_dot: bool | None = None, int8_tiles: bool | None = None):
        self.module = module
        self.lanes = lanes
        self.bf16_dot = host_has_amx_bf16(lanes) if bf16_dot is None else bf16_dot
        self.int8_tiles = host_has_amx_int8(lanes) if int8_tiles is None else int8_tiles
        self.kernels = {op.sym_name.data: op for op in module.ops if isinstance(op, tile.KernelOp)}
        funcs = [op for op in module.ops if isinstance(op, func.FuncOp)]
        if len(funcs) != 1:
            raise MalformedIRError(f"the C backend expects one func.func, found {len(funcs)}")
        self.func = funcs[0]
        self.weight_slots: list[WeightSlot] = []
        self.packs: dict[str, dict[int, PackSpec]] = {}
        self.launch_order: list[str] = []

    def render(self) -> CSource:
        weight_args = weight_arguments(self.module)
        plans, bodies, scratch, shared = {}, [], 0, 0
        for code, (name, kernel) in enumerate(self.kernels.items(), start=1):
            self.packs[name] = packed_arguments(kernel, weight_args, self.lanes, self.bf16_dot, self.int8_tiles)
            plans[name] = plan_kernel(kernel, self.lanes, self.packs[name], self.int8_tiles)
            scratch = max(scratch, plans[name].scratch_floats)
            shared = max(shared, plans[name].shared_floats)
            notes = self.arg_notes(kernel, self.packs[name])
            bodies.append(KernelRenderer(kernel, plans[name], function_name(name), notes, code).render())
        entry = self.render_entry()
        quantized = any(isinstance(o, tile.DequantOp) or (isinstance(o, tile.DotOp) and o.activations is not None)
                        for o in self.module.walk())
        specs = [spec for packs in self.packs.values() for spec in packs.values()]
        pairs, integer = any(s.half == PAIRS for s in specs), any(s.vnni for s in specs)
        headers = (["runtime.h"] + (["half.h"] if self.uses_half() else []) + (["amx.h"] if pairs or integer else [])
                   + (["quant.h"] if quantized else []) + (["quant_amx.h"] if integer else [])
                   + (["matrix.h"] if pairs else []))
        header = "\n".join(resources.files("llmc.backends.c").joinpath(h).read_text() for h in headers)
        args = self.func.body.block.args
        text = "\n\n".join(
            [
                "/* Generated by llmc from tile IR; one exported entry point runs the whole graph. */",
                f"#define LLMC_W {self.lanes}\n#define LLMC_SPLAT(s) {{{', '.join(['s'] * self.lanes)}}}\n"
                f"#define LLMC_SCRATCH_FLOATS {max(scratch, 16)}L\n#define LLMC_SHARED_FLOATS {max(shared, 16)}L",
                header,
                *bodies,
                entry,
            ]
        )
        returned = self.func.body.block.last_op.operands
        return CSource(
            text + "\n",
            self.weight_slots,
            [tuple(a.type.get_shape()) for a in args],
            [tuple(v.type.get_shape()) for v in returned],
            self.launch_order,
            [a.type.element_type for a in args],
            [v.type.element_type for v in returned],
            {code: name for code, name in enumerate(self.kernels, start=1)},
            {i: v.index for i, v in enumerate(returned) if isinstance(v, BlockArgument)},
        )

    def uses_half(self) -> bool:
        """Whether any buffer is bf16 or f16 (half.h is then included)."""
        return any(getattr(v.type, "name", None) == "memref" and v.type.element_type in LOW_PRECISION
                   for op in self.module.walk() for v in (*op.operands, *op.results))

    def arg_notes(self, kernel: tile.KernelOp, packs: dict[int, PackSpec]) -> list[str]:
        notes = []
        for arg in kernel.body.block.args:
            note = f"%{arg.name_hint or arg.index} {arg.type}"
            if arg.index in packs:
                spec = packs[arg.index]
                note += f", packed into {spec.padded[1] // spec.panel} panels of {spec.padded[0]}x{spec.panel}"
            notes.append(note)
        return notes

    def weight_index(self, name: str, pack: PackSpec | None, element=None) -> int:
        slot = WeightSlot(name, pack, element)
        if slot not in self.weight_slots:
            self.weight_slots.append(slot)
        return self.weight_slots.index(slot)

    def render_entry(self) -> str:
        block = self.func.body.block
        names = {arg: f"inputs[{i}]" for i, arg in enumerate(block.args)}
        returned = list(block.last_op.operands)
        extra, body, timed = [], [], []
        for op in block.ops:
            if isinstance(op, tile.WeightOp):
                names[op.result] = op.weight_name.data
            elif isinstance(op, tile.AllocOp):
                names[op.result] = self.alloc_pointer(op, returned, extra)
            elif isinstance(op, tile.LaunchOp):
                call = self.launch_call(op, names)
                body.append("    " + call)
                timed.append("    " + call)
                timed.append(f"    #pragma omp master\n        {{ double now = omp_get_wtime(); seconds[{len(timed) // 2}] += now - t0; t0 = now; }}")
        copies = self.copy_outputs(returned, names)
        self.launch_order = [op.callee.root_reference.data for op in block.ops if isinstance(op, tile.LaunchOp)]
        return ENTRY.format(
            arena=self.func.attributes[ARENA_ATTR].value.data if ARENA_ATTR in self.func.attributes else 0,
            weights=max(1, len(self.weight_slots)),
            weight_count=len(self.weight_slots),
            extras=max(1, len(extra)),
            extra_sizes=", ".join(str(n) for n in extra) or "0",
            extra_count=len(extra),
            body="\n".join("    " + line for line in [*REGION_OPEN, *body, "}", *copies]),
            timed_body="\n".join("    " + line for line in ["double t0 = omp_get_wtime();", *REGION_OPEN, *timed, "}", *copies]),
        )

    def alloc_pointer(self, op: tile.AllocOp, returned: list, extra: list[int]) -> str:
        ctype = c_type(op.result.type.element_type)
        if op.result in returned:
            return f"(({ctype} *)outputs[{returned.index(op.result)}])"
        if op.offset is not None:
            return f"(({ctype} *)(ctx->arena + {op.offset.value.data}))"
        extra.append(int(np.prod(op.result.type.get_shape())) * element_bytes(op.result.type.element_type))
        return f"(({ctype} *)ctx->buffers[{len(extra) - 1}])"

    def launch_call(self, op: tile.LaunchOp, names: dict) -> str:
        callee = op.callee.root_reference.data
        kernel = self.kernels.get(callee)
        if kernel is None:
            raise MalformedIRError(f"tile.launch of unknown kernel @{callee}")
        packs = self.packs[callee]
        pointers = []
        for index, buffer in enumerate(op.buffers):
            ctype = arg_c_type(buffer.type.element_type, packs.get(index))
            if isinstance(buffer.owner, tile.WeightOp):
                slot = self.weight_index(buffer.owner.weight_name.data, packs.get(index), buffer.type.element_type)
                pointers.append(f"(({ctype} *)ctx->weights[{slot}])")
            elif isinstance(buffer, BlockArgument):
                pointers.append(f"(({ctype} *){names[buffer]})")
            elif buffer in names:
                pointers.append(names[buffer])
            else:
                raise MalformedIRError(f"tile.launch @{callee}: argument {index} is not a buffer of the graph")
        args = ", ".join([*pointers, "ctx->scratch", "ctx->shared", "&ctx->status"])
        return f"{function_name(callee)}({args}); /* {c_comment(callee)} */"

    def copy_outputs(self, returned: list, names: dict) -> list[str]:
        lines = []
        for index, value in enumerate(returned):
            source = names[value]
            if isinstance(value, BlockArgument):
                lines.append(f"/* output {index} is input {value.index}, written in place: no copy */")
            elif f"outputs[{index}]" not in source:
                size = int(np.prod(value.type.get_shape())) * element_bytes(value.type.element_type)
                lines.append(f"memcpy(outputs[{index}], {source}, {size});")
        return lines


# One parallel region per forward: threads are woken once, kernels are separated by the
# barrier that ends each kernel's worksharing loop.
REGION_OPEN = ["#pragma omp parallel num_threads(ctx->threads)", "{"]

ENTRY = """typedef struct {{
    void *weights[{weights}];
    char *arena;
    float *scratch;
    float *shared; /* what every thread of a launch reads: a product's lhs packed once (shared_lhs.py) */
    void *buffers[{extras}];
    int threads;
    int status; /* 0, or the code of a kernel that met an index out of range */
}} llmc_context;

static const long llmc_buffer_bytes[{extras}] = {{{extra_sizes}}};

static void *llmc_alloc(long bytes) {{
    size_t size = ((size_t)(bytes > 0 ? bytes : 1) + 63) / 64 * 64;
    void *p = aligned_alloc(64, size);
    if (p) memset(p, 0, size);
    return p;
}}

void llmc_destroy(llmc_context *ctx) {{
    if (!ctx) return;
    free(ctx->arena);
    free(ctx->scratch);
    free(ctx->shared);
    for (int i = 0; i < {extra_count}; i++) free(ctx->buffers[i]);
    free(ctx);
}}

/* Binds the weights (the caller keeps them alive) and allocates the arena and
 * per-thread scratch and the launches' shared buffer; NULL when out of memory. */
llmc_context *llmc_create(void *const *weights) {{
    llmc_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    for (int i = 0; i < {weight_count}; i++) ctx->weights[i] = weights[i];
    ctx->threads = omp_get_max_threads();
    ctx->arena = llmc_alloc({arena});
    ctx->scratch = llmc_alloc(LLMC_SCRATCH_FLOATS * (long)sizeof(float) * ctx->threads);
    ctx->shared = llmc_alloc(LLMC_SHARED_FLOATS * (long)sizeof(float));
    int ok = ctx->arena != NULL && ctx->scratch != NULL && ctx->shared != NULL;
    for (int i = 0; i < {extra_count}; i++) ok = ok && (ctx->buffers[i] = llmc_alloc(llmc_buffer_bytes[i])) != NULL;
    if (!ok) {{
        llmc_destroy(ctx);
        return NULL;
    }}
    return ctx;
}}

/* One forward pass: every kernel of the graph, in order. Not reentrant per context.
 * Returns 0, -1 for a missing context, or the code of a kernel that read an index out of range. */
int llmc_forward(llmc_context *ctx, void *const *inputs, void *const *outputs) {{
    if (!ctx) return -1;
    (void)inputs;
    ctx->status = 0;
{body}
    return ctx->status;
}}

/* The same, adding each launch's wall time to seconds[i] (launch order). */
int llmc_forward_profiled(llmc_context *ctx, void *const *inputs, void *const *outputs, double *seconds) {{
    if (!ctx) return -1;
    (void)inputs;
    ctx->status = 0;
{timed_body}
    return ctx->status;
}}"""


def render_module(module: ModuleOp, lanes: int, bf16_dot: bool | None = None,
                  int8_tiles: bool | None = None) -> CSource:
    """The C source of `module` at `lanes` floats a vector; `bf16_dot` says whether bf16 weights of
    prefill-sized products are packed for AMX tiles (matrix.h), `int8_tiles` whether quantized weights of
    prefill-sized products with int8 activations are packed for AMX int8 tiles (quant_amx.h); by default
    whether this host has them."""
    return ModuleRenderer(module, lanes, bf16_dot, int8_tiles).render()
