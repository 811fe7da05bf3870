"""The Triton backend, run by Triton's interpreter on CPU tensors (TRITON_INTERPRET=1)."""

import re

import pytest
from conftest import SMALL, assert_close, eager, small_example

import llmc
from llmc.errors import LlmcError

EXAMPLE_NAMES = sorted(SMALL)


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def outputs(result):
    return [r.numpy() for r in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_matches_eager_under_the_interpreter(name, interpreted):
    model, inputs = small_example(name)
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    assert compiled.backend == "triton"
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


@pytest.mark.parametrize("name, sizes", [("gpt2_block", dict(seq=13)), ("llama_decode", dict(past=37))])
def test_odd_sizes_match_eager(name, sizes, interpreted):
    model, inputs = small_example(name, **sizes)
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


def test_the_passes_show_up_in_the_triton_code(interpreted):
    model, inputs = small_example("gpt2_block", d_model=128, n_head=4, seq=64)
    passes = "fuse,tile{target=gpu matmul=32,32,32 attention=32,32},lower-tile,coalesce{target=gpu},swizzle{target=gpu group=2},pipeline{stages=2},plan-memory"
    compiled = llmc.compile(model, inputs, target="triton", passes=passes, emit=lambda _: None)
    source = compiled.program.source
    kernels = re.findall(r"@triton.jit\ndef (kernel_\w+)\(", source)
    assert len(kernels) == 7 and sum("attention" in k for k in kernels) == 1
    assert "grouped program order" in source  # swizzle's group
    assert "tl.max_contiguous(tl.multiple_of(" in source  # coalesce's vector width
    assert "software-pipelined by llmc, 2 stages" in source and "[prologue]" in source and "[epilogue]" in source
    assert 'tl.dot(' in source and 'input_precision="ieee"' in source
    assert re.search(r"# graph\.gelu @ gpt2_block\.py:\d+", source)
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


def test_without_a_gpu_or_the_interpreter_the_error_says_what_to_do(no_gpu):
    model, inputs = small_example("gpt2_block")
    with pytest.raises(LlmcError, match="TRITON_INTERPRET=1"):
        llmc.compile(model, inputs, target="triton", emit=lambda _: None)


def test_a_failing_kernel_is_named_with_its_ir(interpreted, monkeypatch):
    from llmc.backends.triton import render
    from llmc.errors import BuildError

    monkeypatch.setitem(render.UNARY, render.graph.ExpOp, "tl.no_such_function({0})")
    model, inputs = small_example("gpt2_block_sdpa")
    compiled = llmc.compile(model, inputs, target="triton", emit=lambda _: None)
    with pytest.raises(BuildError, match=r"(?s)Triton kernel @k\d+_attention failed.*tile IR.*tile.kernel @k\d+_attention"):
        compiled(*inputs)


@pytest.mark.parametrize("fallback", ["c", "eager"])
def test_fallback_runs_when_asked_for(fallback, interpreted, monkeypatch):
    from llmc.backends.triton import render

    monkeypatch.setitem(render.UNARY, render.graph.ExpOp, "tl.no_such_function({0})")
    model, inputs = small_example("gpt2_block_sdpa")
    compiled = llmc.compile(model, inputs, target="triton", fallback=fallback, emit=lambda _: None)
    with pytest.warns(UserWarning, match="falling back"):
        got = compiled(*inputs)
    assert_close(outputs(got), eager(model, inputs), tol=1e-4)


def test_missing_gpu_with_a_fallback_builds_the_fallback(no_gpu):
    model, inputs = small_example("gpt2_block")
    with pytest.warns(UserWarning, match="falling back"):
        compiled = llmc.compile(model, inputs, target="triton", fallback="c", emit=lambda _: None)
    assert_close(outputs(compiled(*inputs)), eager(model, inputs), tol=1e-4)


def test_cli_target_triton_writes_the_kernels(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    model_file = tmp_path / "small_decode.py"
    model_file.write_text(
        f"import sys\nsys.path.insert(0, {str(examples)!r})\nfrom gpt2_decode import build\n"
        "model, example_inputs = build(d_model=64, n_head=4, past=19)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "llmc", "compile", str(model_file), "--target", "triton", "--run",
         "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={**__import__("os").environ, "TRITON_INTERPRET": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "the Triton kernels" in done.stdout and "OK" in done.stdout
    assert "@triton.jit" in (tmp_path / "out" / "kernels_triton.py").read_text()


AOT_SCRIPT = """
import sys, torch
sys.path.insert(0, {examples!r})
from gpt2_block import build
import llmc
from llmc.backends.triton.aot import compile_for_gpu
from llmc.registry import default_pipeline
model, inputs = build(d_model=128, n_head=2, seq=64)
model, inputs = model.bfloat16(), tuple(x.bfloat16() for x in inputs)
for mode in ("delegate", "expand"):
    passes = default_pipeline("gpu").replace("mode=delegate", "mode=" + mode)
    compiled = llmc.compile(model, inputs, target="gpu", backend="interpret", passes=passes, emit=lambda *_: None)
    for b in compile_for_gpu(compiled.module, 90):
        print(mode, b.name, b.options.get("num_stages", "-"), b.registers, b.instructions["cp.async.cg"],
              b.instructions["wgmma"] + b.instructions["mma.sync"])
"""


def test_every_kernel_compiles_for_sm90_ahead_of_time():
    """Triton's GPU compiler (no GPU needed) accepts every generated kernel; Triton pipelines a delegated
    loop with asynchronous copies, and an expanded one is left to llmc (num_stages=1, no async copies)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    examples = str(Path(__file__).resolve().parents[2] / "examples")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_SCRIPT.format(examples=examples)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    by_mode = {mode: {r[1]: r[2:] for r in rows if r[0] == mode} for mode in ("delegate", "expand")}
    assert len(by_mode["delegate"]) == len(by_mode["expand"]) == 7
    assert all(int(r[3]) > 0 for r in rows)  # the cubin's register count was read
    linear = by_mode["delegate"]["k1_linear"]
    assert int(linear[2]) > 0 and int(linear[3]) > 0  # async copies feeding tensor-core ops
    assert by_mode["expand"]["k1_linear"][0] == "1" and by_mode["expand"]["k1_linear"][2] == "0"
