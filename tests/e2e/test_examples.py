"""Every example, through every level, against PyTorch eager; every dump re-parses."""

import pytest
from conftest import SMALL, assert_close, eager, graph_args, roundtrip, run_ir, small_example, user_results

import llmc
from llmc.ir_text import parse_ir, print_ir
from llmc.pipeline import DumpOptions

EXAMPLE_NAMES = sorted(SMALL)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_exporter_and_interpreter_match_eager(name, exported):
    model, inputs, imported = exported(name)
    results = run_ir(imported.module, graph_args(model, inputs, imported), imported.weights)
    assert_close(user_results(results, imported), eager(model, inputs))


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_full_pipeline_matches_eager_and_every_dump_reparses(name, tmp_path):
    model, inputs = small_example(name)
    compiled = llmc.compile(model, inputs, dumps=DumpOptions(dump_dir=tmp_path), emit=lambda _: None)
    got = compiled(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    assert_close([g.numpy() for g in got], eager(model, inputs))
    dumps = sorted(tmp_path.glob("*.mlir"))
    assert [d.name.split("-", 1)[1] for d in dumps] == [
        "input.mlir", "fuse.mlir", "tile.mlir", "lower-tile.mlir", "coalesce.mlir", "swizzle.mlir",
        "pipeline.mlir", "plan-memory.mlir"]
    for dump in dumps:
        text = dump.read_text()
        assert print_ir(parse_ir(text)) == text
        # a resumed dump still runs and agrees
    last = parse_ir(dumps[-1].read_text())
    results = run_ir(last, graph_args(model, inputs, compiled.imported), compiled.imported.weights)
    assert_close(user_results(results, compiled.imported), eager(model, inputs))


@pytest.mark.parametrize("seq", [1, 7, 33])
def test_gpt2_odd_lengths(seq):
    model, inputs = small_example("gpt2_block", seq=seq)
    got = llmc.compile(model, inputs, emit=lambda _: None)(*inputs)
    assert_close([got.numpy()], eager(model, inputs))


def test_a_lone_example_tensor_is_one_input():
    """Not a sequence of inputs: unpacked along its first dimension it would compile the wrong shapes."""
    model, inputs = small_example("gpt2_block")
    (x,) = inputs
    compiled = llmc.compile(model, x, emit=lambda _: None)
    assert_close([compiled(x).numpy()], eager(model, inputs))


def test_calls_that_do_not_match_the_example_inputs_are_refused():
    """Positional tensors take a fast path past the input tree; anything else still meets the tree's check."""
    model, inputs = small_example("gpt2_block")
    compiled = llmc.compile(model, inputs, emit=lambda _: None)
    (x,) = inputs
    with pytest.raises(llmc.LlmcError, match="compiled for inputs shaped like"):
        compiled(x, x)
    with pytest.raises(llmc.LlmcError, match="compiled for inputs shaped like"):
        compiled([x])
    with pytest.raises(llmc.LlmcError, match="positional|keyword"):
        compiled(x=x)
    assert_close([compiled(x).numpy()], eager(model, inputs))


def test_gpu_target_decisions_also_preserve_semantics():
    model, inputs = small_example("llama_block")
    got = llmc.compile(model, inputs, target="gpu", backend="interpret", emit=lambda _: None)(*inputs)
    assert_close([got.numpy()], eager(model, inputs))


def test_kernel_structure_of_gpt2_block():
    model, inputs = small_example("gpt2_block")
    compiled = llmc.compile(model, inputs, emit=lambda _: None)
    kernels = [op for op in compiled.runner.snapshots["fuse"].walk() if op.name == "kernel.kernel"]
    names = [k.kernel_name.data for k in kernels]
    assert len(kernels) == 7, names
    assert sum(k.kind.data == "attention" for k in kernels) == 1
    assert any("linear_gelu" in n for n in names) and sum("linear_add" in n for n in names) == 2
    assert "graph.softmax" not in print_ir(compiled.runner.snapshots["fuse"])


def test_torch_compile_backend_matches_eager():
    import torch

    model, inputs = small_example("gpt2_block_sdpa")
    compiled = torch.compile(model, backend="llmc")
    with torch.no_grad():
        assert_close([compiled(*inputs).numpy()], eager(model, inputs))


def test_torch_compile_runs_the_flagship_in_llmc_not_eager():
    # the tril mask buffer arrives as a bool graph input: it once sent the whole graph to eager, with
    # advice to use float32 on a float32 model
    import warnings

    import torch

    import llmc

    torch._dynamo.reset()
    llmc.dynamo_backend.reset_stats()
    model, inputs = small_example("gpt2_block")
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        got = torch.compile(model, backend="llmc")(*inputs)
    assert_close([got.numpy()], eager(model, inputs))
    assert not [w for w in caught if "llmc" in str(w.message)], [str(w.message) for w in caught]
    stats = llmc.dynamo_backend.dynamo_stats()
    assert stats.llmc_runs == 1 and not any(g.eager_ops or g.note for g in stats.graphs)
    torch._dynamo.reset()


def test_roundtrip_of_exported_ir(exported):
    _, _, imported = exported("llama_block")
    text = roundtrip(imported.module)
    assert "graph.weight \"attention.wq.weight\"" in text and "dense<" not in text
    assert 'loc = "llama_block.py:' in text
