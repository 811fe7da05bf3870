"""The SIMD C backend: generated code against eager and the IR interpreter, and what it is made of."""

import importlib
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import SMALL, RunningSum, assert_close, eager, run_ir, run_passes, small_example

import llmc
from llmc.backends.c.build import BuildOptions
from llmc.backends.c.module import pack_panels, render_module
from llmc.backends.c.plan import PackSpec
from llmc.ir_text import parse_ir, print_ir
from llmc.target import host_cpu_target, micro_rows

EXAMPLE_NAMES = sorted(SMALL)


def compile_c(model, inputs, **options):
    compiled = llmc.compile(model, inputs, target="c", emit=lambda _: None, **options)
    assert compiled.program is not None
    return compiled


def outputs(result):
    return [r.numpy() for r in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_at_full_size_matches_eager(name):
    module = importlib.import_module(name)
    model, inputs = module.model, module.example_inputs
    compiled = compile_c(model, inputs)
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


@pytest.mark.parametrize("name, sizes", [
    ("gpt2_block", dict(seq=7)),            # odd T
    ("gpt2_block", dict(seq=100)),          # T not a multiple of any tile
    ("gpt2_block", dict(d_model=36, n_head=4, seq=13)),  # d and head dim not multiples of the vector width
    ("llama_block", dict(d_model=40, n_head=4, n_kv_head=2, hidden=72, seq=29)),
    ("gpt2_decode", dict(past=100)),
    ("llama_decode", dict(d_model=40, n_head=4, n_kv_head=2, hidden=72, past=37)),
    ("gpt2_block_sdpa", dict(seq=65)),
])
def test_other_sizes_match_eager(name, sizes):
    model, inputs = small_example(name, **sizes)
    assert_close(outputs(compile_c(model, inputs)(*inputs)), eager(model, inputs), tol=1e-4)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_generated_c_agrees_with_the_interpreter_on_the_same_ir(stages):
    # Three stages rotate the loop-carried tiles through several scratch slots.
    model, inputs = small_example("gpt2_block", seq=37)
    passes = (f"fuse,tile{{target=cpu matmul=16,32,16 attention=16,16}},lower-tile,coalesce{{target=cpu}},"
              f"swizzle{{target=cpu}},pipeline{{stages={stages}}},plan-memory")
    compiled = compile_c(model, inputs, passes=passes)
    interpreted = run_ir(compiled.module, inputs, compiled.imported.weights)
    assert_close(outputs(compiled(*inputs)), interpreted, tol=1e-4)


@pytest.mark.parametrize("target", ["cpu-avx2", "cpu-scalar"])
def test_vector_widths_other_than_the_host(target):
    model, inputs = small_example("llama_block")
    flags = "-O1 -fopenmp -fno-math-errno" + (" -mavx2 -mfma" if target == "cpu-avx2" else "")
    compiled = llmc.compile(model, inputs, target=target, emit=lambda _: None,
                            build=BuildOptions.from_environment(flags=flags))
    assert f"#define LLMC_W {8 if target == 'cpu-avx2' else 1}" in compiled.program.source.text
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


def test_the_passes_show_up_in_the_c():
    model, inputs = small_example("gpt2_block", d_model=768, n_head=12, seq=64)
    source = compile_c(model, inputs).program.source.text
    functions = re.findall(r"^static void (kernel_\w+)\(", source, re.M)
    assert len(functions) == 7 and sum("attention" in f for f in functions) == 1
    assert source.count("llmc_forward(llmc_context") == 1
    linear_gelu = source[source.index("static void kernel_k5_linear_gelu"):]
    linear_gelu = linear_gelu[: linear_gelu.index("\n}\n")]
    # software pipeline: the first panel is fetched before the K loop, the next one after the dot in it
    prologue, loop = linear_gelu.split("software-pipelined", 1)
    assert "[prologue]" in prologue and "llmc_dot(" in loop
    body = loop[: loop.index("next0")]
    assert body.index("llmc_dot(") < body.index("[body] */")
    assert "[epilogue]" in loop
    # weights packed into panels, read in place; bias and GELU fused into the store loop
    assert "packed at compile time" in linear_gelu
    store = linear_gelu[linear_gelu.index("tile.store"):]
    assert "vgelu_tanh" in store and "llmc_store_vec" in store
    # the model's source line reaches the comments
    assert re.search(r"graph\.gelu .*@ gpt2_block\.py:\d+", linear_gelu)


def test_decode_attention_reads_the_cache_in_place():
    model, inputs = small_example("gpt2_decode")
    source = compile_c(model, inputs).program.source.text
    start = re.search(r"static void kernel_k\d+_attention", source).start()
    attention = source[start:]
    assert "llmc_dot_nt(" in attention and "no transposing copy" in attention
    # the KV loop's bound is read from the position: keys past it are never loaded
    assert re.search(r"const long v\d+ = \(long\)\(\(const int64_t \*\)v\d+\.p\)\[0\]; /\* %v\d+ = tile.to_index", attention)


def test_a_row_kernel_reads_its_statistics_once_per_row_and_prefetches_the_next_tile():
    """softmax: the store pass reads the row's sum above its column loop (so the reciprocal is one division per
    row), and the exp pass, the second over the rows, asks for the next tile's rows; the output matches eager."""

    class Softmax(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    x = (torch.randn(1, 40, 100),)
    compiled = compile_c(Softmax(), x, autotune=False)
    source = compiled.program.source.text
    kernel = source[source.index("static void kernel_k0_softmax"):]
    kernel = kernel[: kernel.index("\n}\n")]
    store = kernel[kernel.index("tile.store"):]
    row_loop, column_loop = store.split("for (long c = 0;", 1)
    assert re.search(r"const vf x\d+ = vsplat\(v\d+\.p\[r \* v\d+\.ld\]\); /\* read \*/", row_loop)
    assert "1.0f /" in column_loop and "vsplat(v" not in column_loop
    first_pass = kernel[kernel.index("kind=max"):kernel.index("vhmax")]
    exp_pass = kernel[kernel.index("graph.exp"):kernel.index("vhsum")]
    assert "__builtin_prefetch(" not in first_pass  # that pass waits on memory: the next one, computing, asks
    assert "__builtin_prefetch(" in exp_pass and kernel.count("__builtin_prefetch(") == 1
    np.testing.assert_allclose(compiled(*x).numpy(), torch.softmax(x[0], -1).numpy(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("width", [768, 300])
def test_a_row_kernel_computes_only_the_columns_its_rows_have(width):
    """A row tile is a power of two: 768 columns take 1024. The centred copy and the store stop at the row's
    width (the store at the view's edge), and nothing past it is computed through the edge loads."""
    norm = torch.nn.LayerNorm(width).eval()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    inputs = (torch.randn(1, 5, width),)
    compiled = compile_c(norm, inputs)
    source = compiled.program.source.text
    kernel = source[source.index("row kernel"):]
    kernel = kernel[: kernel.index("\n}\n")]
    bounds = re.findall(r"for \(long c = 0; c < ([^;]+); c \+= LLMC_W\)", kernel)
    tile = 1 << (width - 1).bit_length()
    assert len(bounds) == 3 and bounds[:2] == [str(width)] * 2
    assert re.fullmatch(rf"\({tile} < {width} - v\d+ \? {tile} : {width} - v\d+\)", bounds[2])
    assert_close(outputs(compiled(*inputs)), eager(norm, inputs), tol=1e-5)


@pytest.mark.parametrize("batch, rows, k, row_blocks, tile_k", [(1, 40, 100, 2, 32), (1, 130, 96, 4, 64),
                                                                (3, 21, 50, 2, 32), (1, 5, 64, 0, 32)])
def test_a_linear_packs_its_input_once_per_launch(batch, rows, k, row_blocks, tile_k):
    """Every column tile reads the same rows: the kernel packs them once into the shared buffer (each batch's
    matrix, zero rows and k up to whole tiles) and the products read views of it; a tile of at most 8 rows (a
    decode step's) is read in place. Odd sizes, against eager and against the same IR in the interpreter. Row
    tiles are whole blocks of the host's micro-kernel rows (8 with 32 vector registers, 6 with 16), as the
    cost model picks them; 0 blocks: a tile of 8 rows."""
    linear = torch.nn.Linear(k, 96).eval()
    inputs = (torch.randn(batch, rows, k),)
    tile_rows = row_blocks * micro_rows(host_cpu_target().lanes) or 8
    passes = (f"fuse,tile{{target=cpu matmul={tile_rows},{tile_k},{tile_k}}},lower-tile,coalesce{{target=cpu}},"
              f"swizzle{{target=cpu}},pipeline{{stages=2}},plan-memory")
    compiled = compile_c(linear, inputs, passes=passes)
    source = compiled.program.source.text
    packs = re.findall(r"for \(long b = 0; b < (\d+); b\+\+\) llmc_pack_lhs\(shared \+ 0 \+ b \* (\d+), arg0 \+ 0 \+ "
                       r"b \* (\d+), (\d+), (\d+), (\d+), (\d+)\);", source)
    padded_rows, padded_k = -(-rows // tile_rows) * tile_rows, -(-k // tile_k) * tile_k
    if tile_rows <= 8:
        assert not packs
    else:
        step = rows * k if batch > 1 else 0
        expected = (batch, padded_rows * padded_k, step, rows, k, k, padded_k)
        assert packs == [tuple(str(n) for n in expected)]
        assert source.count(".ld = 0;") == 2  # the pipeline's prologue and body loads: views of the packing
        # and they say how many rows hold data, so that the last row tile computes only those blocks
        assert source.count(f".rows = {rows} - ") == 2
    interpreted = run_ir(compiled.module, inputs, compiled.imported.weights)
    assert_close(outputs(compiled(*inputs)), interpreted, tol=1e-4)
    assert_close(outputs(compiled(*inputs)), eager(linear, inputs), tol=1e-4)


@pytest.mark.parametrize("tail", range(1, 8))
def test_the_block_that_holds_the_last_rows_computes_only_them(tail):
    """A packed lhs whose rows end inside a block of the micro-kernel's rows (128 in blocks of 6 end with 2)
    computes that block's rows with fewer accumulators, in sets that take alternate k (K 70 in tiles of 32: a
    tile of 6 k ends the sets' loop with a remainder); the result is eager's and the interpreter's."""
    block = micro_rows(host_cpu_target().lanes)
    if tail >= block:
        pytest.skip(f"blocks of {block} rows end with at most {block - 1}")
    linear = torch.nn.Linear(70, 48).eval()
    inputs = (torch.randn(1, 4 * block + tail, 70),)
    passes = (f"fuse,tile{{target=cpu matmul={2 * block},32,32}},lower-tile,coalesce{{target=cpu}},"
              f"swizzle{{target=cpu}},pipeline{{stages=2}},plan-memory")
    compiled = compile_c(linear, inputs, passes=passes)
    assert "llmc_pack_lhs(shared" in compiled.program.source.text
    assert_close(outputs(compiled(*inputs)), run_ir(compiled.module, inputs, compiled.imported.weights), tol=1e-4)
    assert_close(outputs(compiled(*inputs)), eager(linear, inputs), tol=1e-4)


@pytest.mark.parametrize("rows", [1, 4, 40])
def test_product_programs_go_to_whichever_thread_is_free(rows):
    """A matmul kernel's programs go to whichever thread is free (a slower core does not hold the other at the
    barrier), whatever its rows; row kernels keep contiguous runs (each prefetches the next program's rows).
    Either way the result is the model's."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256)).eval()
    inputs = (torch.randn(1, rows, 64),)
    compiled = compile_c(model, inputs)
    text = compiled.program.source.text
    kernels = text[text.index("/* @"):]  # past the runtime's own loops
    pragmas = re.findall(r"/\* @(k\d+_\w+):.*?#pragma omp for(?: collapse\(\d\))? schedule\(([^)]*)\)", kernels, re.S)
    assert [schedule for _, schedule in pragmas] == ["dynamic, 1", "static"], pragmas
    assert "linear" in pragmas[0][0] and "layer_norm" in pragmas[1][0]
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


def test_ir_text_to_c_round_trip(tmp_path):
    model, inputs = small_example("gpt2_block")
    first = llmc.compile(model, inputs, backend="interpret", emit=lambda _: None)
    module = parse_ir(print_ir(first.module))
    assert render_module(module, 8).text == render_module(first.module, 8).text


def test_names_from_the_model_cannot_inject_code():
    class Evil(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module('x*/ int evil(void) { return 1; } /*', torch.nn.Linear(16, 16))

        def forward(self, x):
            return getattr(self, 'x*/ int evil(void) { return 1; } /*')(x)

    model, inputs = Evil().eval(), (torch.randn(1, 4, 16),)
    compiled = compile_c(model, inputs)
    code_outside_comments = re.sub(r"/\*.*?\*/", "", compiled.program.source.text, flags=re.S)
    assert "evil" not in code_outside_comments
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-5)


def test_per_kernel_times_fill_the_report():
    model, inputs = small_example("llama_block")
    compiled = compile_c(model, inputs)
    measured = compiled.profile(inputs, repeats=3)
    assert set(measured) == {name for name in compiled.program.source.launches}
    assert all(us > 0 for us in measured.values())
    assert "measured total" in compiled.report(measured)


def test_torch_compile_backend_runs_the_c_library():
    model, inputs = small_example("gpt2_block_sdpa")
    compiled = torch.compile(model, backend="llmc")
    with torch.no_grad():
        got = compiled(*inputs)
    np.testing.assert_allclose(got.numpy(), eager(model, inputs)[0], atol=1e-4)


def test_run_passes_then_c_on_a_pass_replay():
    # A dump resumed with `llmc opt`-style passes still renders and agrees.
    model, inputs = small_example("gpt2_block")
    compiled = llmc.compile(model, inputs, backend="interpret", passes="fuse,tile,lower-tile", emit=lambda _: None)
    module = run_passes(parse_ir(print_ir(compiled.module)), "coalesce,swizzle,pipeline{stages=2},plan-memory")
    from llmc.backends.c import compile_c as build
    from llmc.target import get_target

    program = build(module, compiled.imported.weights, get_target("cpu"), BuildOptions.from_environment())
    assert_close(outputs(tuple(program.library(*inputs))), eager(model, inputs), tol=1e-4)


def test_inputs_of_another_dtype_or_shape_are_refused():
    from llmc.errors import LlmcError

    model, inputs = small_example("gpt2_block")
    compiled = compile_c(model, inputs)
    with pytest.raises(LlmcError, match="float32 CPU tensors"):
        compiled(inputs[0].double())
    with pytest.raises(LlmcError, match="compiled for"):
        compiled(inputs[0][:, :3])


def test_a_cache_the_caller_replaces_is_the_one_the_next_step_reads_and_writes():
    """The KV caches are the model's buffers, looked up at every call: a cache replaced by assignment (a reset
    between two prompts) is read and written in place by the next step, as eager does; a non-contiguous input
    that is not a cache is copied, not refused."""
    import copy

    model, (x, pos) = small_example("gpt2_decode")
    reference = copy.deepcopy(model)
    compiled = compile_c(model, (x, pos))
    compiled(x, pos)
    with torch.no_grad():
        reference(x, pos)
    for m in (model, reference):
        m.k_cache = torch.randn(m.k_cache.shape, generator=torch.Generator().manual_seed(1))
        m.v_cache = torch.zeros_like(m.v_cache)
    replaced = model.k_cache
    with torch.no_grad():
        got, expected = compiled(x, pos), reference(x, pos)
    assert_close([got.numpy()], [expected.numpy()], tol=1e-4)
    assert model.k_cache is replaced  # written in place
    assert_close([model.k_cache.numpy(), model.v_cache.numpy()], [reference.k_cache.numpy(), reference.v_cache.numpy()],
                 tol=1e-5)
    strided = torch.randn(1, 1, 2 * x.shape[-1])[..., ::2]
    assert not strided.is_contiguous()
    with torch.no_grad():
        assert_close([compiled(strided, pos).numpy()], [reference(strided, pos).numpy()], tol=1e-4)


def test_a_decode_step_called_with_positional_tensors_flattens_nothing_and_does_what_eager_does(monkeypatch):
    """A step called with positional tensors binds its inputs and caches without the input tree (a decode step
    pays every Python operation after its kernels); it returns and writes what eager does, and refuses what
    it cannot run with an llmc error."""
    import copy

    import llmc.api

    model, (x, pos) = small_example("gpt2_decode")
    reference = copy.deepcopy(model)
    compiled = compile_c(model, (x, pos))

    def no_tree(*_):
        raise AssertionError("a call with positional tensors flattened its inputs")

    monkeypatch.setattr(llmc.api, "tree_flatten", no_tree)
    for step in range(3):
        x, pos = torch.randn_like(x), pos + 1
        with torch.no_grad():
            got, expected = compiled(x, pos), reference(x, pos)
        assert_close([got.numpy()], [expected.numpy()], tol=1e-4)
        assert_close([model.k_cache.numpy(), model.v_cache.numpy()],
                     [reference.k_cache.numpy(), reference.v_cache.numpy()], tol=1e-5)
    with pytest.raises(llmc.LlmcError, match="input 2 has shape"):
        compiled(x[..., :-1], pos)
    monkeypatch.undo()
    with pytest.raises(llmc.LlmcError, match="is int; the graph takes tensors"):
        compiled(x, 3)
    del model.k_cache
    with pytest.raises(llmc.LlmcError, match="input 0 is NoneType.*no longer has its buffer 'k_cache'"):
        compiled(x, pos)
    fresh, (x, pos) = small_example("gpt2_decode")
    unbound = compile_c(fresh, (x, pos))
    del fresh.v_cache  # before the first call, which finds each buffer's module
    with pytest.raises(llmc.LlmcError, match="no longer has its buffer 'v_cache'"):
        unbound(x, pos)


def test_a_buffer_the_graph_does_not_write_in_place_is_copied_back():
    model, x = RunningSum(), torch.ones(4)
    compiled = compile_c(model, (x,))
    assert compiled.program.library.source.output_aliases == {}
    compiled(x)
    model.acc = torch.ones(4)  # replaced: the one read and written next
    assert torch.equal(compiled(x), torch.full((4,), 4.0))
    assert torch.equal(model.acc, torch.full((4,), 2.0))


def test_calls_from_several_threads_do_not_share_the_arena():
    from concurrent.futures import ThreadPoolExecutor

    model, inputs = small_example("gpt2_block")
    compiled = compile_c(model, inputs)
    batches = [(torch.randn_like(inputs[0]),) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: compiled(*args), batches))
    for args, got in zip(batches, results):
        assert_close([got.numpy()], eager(model, args), tol=1e-4)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 70), n=st.integers(1, 100), transposed=st.booleans(), base=st.integers(0, 5),
       pad_rows=st.integers(0, 9))
def test_weight_panels_hold_the_logical_view_padded_with_zeros(k, n, transposed, base, pad_rows):
    """Panel p, row r, lane j is the view's element (r, p * panel + j); zero outside the view."""
    panel = 32
    storage = np.random.default_rng(k * 131 + n).standard_normal(base + k * n).astype(np.float32)
    strides = (1, k) if transposed else (n, 1)  # a linear layer's weight is read transposed
    padded = (k + pad_rows, -(-n // panel) * panel)
    got = pack_panels(storage, PackSpec(base, (k, n), strides, panel, padded))
    view = np.zeros(padded, dtype=np.float32)
    for r in range(k):
        for c in range(n):
            view[r, c] = storage[base + r * strides[0] + c * strides[1]]
    assert got.shape == (padded[1] // panel, padded[0], panel)
    for p in range(got.shape[0]):
        np.testing.assert_array_equal(got[p], view[:, p * panel : (p + 1) * panel])
