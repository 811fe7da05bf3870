"""Shared helpers: small versions of the examples, pipelines, FileCheck."""

from __future__ import annotations

import os

# Triton decides at import whether its kernels run in the interpreter; CI has no GPU, so every
# Triton kernel in the test session runs on CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests check what is computed, not how fast: no autotuning unless a test asks for it (test_autotune.py)
os.environ.setdefault("LLMC_AUTOTUNE", "0")

import importlib  # noqa: E402
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from llmc.exporter import export_model
from llmc.interpret import interpret
from llmc.ir_text import parse_ir, print_ir
from llmc.registry import make_context, parse_passes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

SMALL = {
    "gpt2_block": dict(d_model=64, n_head=4, seq=24),
    "gpt2_block_sdpa": dict(d_model=64, n_head=4, seq=24),
    "llama_block": dict(d_model=64, n_head=4, n_kv_head=2, hidden=96, seq=20),
    "gpt2_decode": dict(d_model=64, n_head=4, past=19),
    "llama_decode": dict(d_model=64, n_head=4, n_kv_head=2, hidden=96, past=19),
}


# A linear + GELU + linear + residual graph: the IR-text input of the pass tests.
MLP = """
func.func @forward(%x: tensor<1x24x32xf32>) -> tensor<1x24x32xf32> {
  %w1 = graph.weight "fc.weight" : tensor<48x32xf32>
  %b1 = graph.weight "fc.bias" : tensor<48xf32>
  %w2 = graph.weight "proj.weight" : tensor<32x48xf32>
  %h = graph.linear %x, %w1, %b1 : (tensor<1x24x32xf32>, tensor<48x32xf32>, tensor<48xf32>) -> tensor<1x24x48xf32>
  %g = graph.gelu %h {approximate = "tanh"} : tensor<1x24x48xf32> -> tensor<1x24x48xf32>
  %o = graph.linear %g, %w2 : (tensor<1x24x48xf32>, tensor<32x48xf32>) -> tensor<1x24x32xf32>
  %r = graph.add %o, %x : (tensor<1x24x32xf32>, tensor<1x24x32xf32>) -> tensor<1x24x32xf32>
  func.return %r : tensor<1x24x32xf32>
}
"""


class RunningSum(torch.nn.Module):
    """State the graph updates but does not write in place: its sum is copied back after each call."""

    def __init__(self):
        super().__init__()
        self.register_buffer("acc", torch.zeros(4))

    def forward(self, x):
        self.acc.add_(x)
        return self.acc * 2


def small_example(name: str, **overrides):
    module = importlib.import_module(name)
    return module.build(**{**SMALL[name], **overrides})


def eager(model, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def run_passes(module, spec: str):
    ctx = make_context()
    for p in parse_passes(spec):
        p.apply(ctx, module)
        module.verify()
    return module


def run_ir(module, inputs, weights) -> list[np.ndarray]:
    return interpret(module, [x.numpy() if isinstance(x, torch.Tensor) else x for x in inputs], weights)


def graph_args(model, inputs, imported) -> list:
    """The graph's arguments for these model inputs: the state buffers it updates (copies) and the inputs."""
    return [model.get_buffer(s.name).clone() if s.kind == "buffer" else inputs[s.index] for s in imported.arguments]


def user_results(results: list, imported) -> list:
    """The model's own outputs among a graph's results (the rest are state written back)."""
    return [results[i] for i in imported.user_outputs]


def assert_close(got, expected, tol=2e-5):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, atol=tol, rtol=tol)


def filecheck(output: str, checks: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".mlir", delete=False) as f:
        f.write(checks)
    result = subprocess.run(["filecheck", f.name], input=output, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr + "\n--- output ---\n" + output


def roundtrip(module) -> str:
    text = print_ir(module)
    assert print_ir(parse_ir(text)) == text
    return text


def random_args(module, rng):
    func = next(op for op in module.walk() if op.name == "func.func")
    return [rng.standard_normal(tuple(a.type.get_shape())).astype(np.float32) for a in func.body.block.args]


def check_pass(text: str, before: str, spec: str, checks: str, weights=None, args=None):
    """Run `before` then parse the printed IR, run `spec` on it, FileCheck, and compare interpretations
    (on `args`, or random float inputs)."""
    weights = weights or {}
    module = run_passes(parse_ir(text), before) if before else parse_ir(text)
    module = parse_ir(print_ir(module))
    args = random_args(module, np.random.default_rng(0)) if args is None else args
    expected = run_ir(module, args, weights)
    after = run_passes(module, spec)
    filecheck(print_ir(after), checks)
    assert_close(run_ir(parse_ir(print_ir(after)), args, weights), expected)
    return after


@pytest.fixture
def exported():
    def make(name: str, **overrides):
        model, inputs = small_example(name, **overrides)
        return model, inputs, export_model(model, inputs)

    return make


@pytest.fixture
def no_gpu(monkeypatch):
    """Neither a GPU nor Triton's interpreter: the Triton backend cannot run here."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")


@pytest.fixture(autouse=True, scope="session")
def private_build_cache(tmp_path_factory):
    """Builds go to a cache of the test session's own, never the user's."""
    import os

    cache = tmp_path_factory.mktemp("llmc-cache")
    previous = os.environ.get("LLMC_CACHE_DIR")
    os.environ["LLMC_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LLMC_CACHE_DIR", None)
    else:
        os.environ["LLMC_CACHE_DIR"] = previous


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="differential fuzzing with fresh random seeds and 20x the programs of a CI run")


def pytest_configure(config):
    from hypothesis import HealthCheck, settings

    # CI: the same programs every run (derandomized), so a red build is reproducible; --fuzz-long
    # explores new ones on every run
    quiet = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    settings.register_profile("ci", derandomize=True, **quiet)
    settings.register_profile("long", derandomize=False, **quiet)
    settings.load_profile("long" if config.getoption("--fuzz-long") else "ci")


def pytest_terminal_summary(terminalreporter):
    from fuzz_counts import COUNTS

    if COUNTS:
        terminalreporter.write_line("fuzzing: " + ", ".join(f"{n} {what}" for what, n in sorted(COUNTS.items())))
