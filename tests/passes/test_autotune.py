"""autotune: candidates from the cost model built and timed in the generated C, checked against the
interpreter, the fastest written on the kernel (and kept by `tile`), cached per host, shape and version."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MLP, assert_close, filecheck, random_args, run_ir, run_passes, small_example

import llmc.passes.autotune as autotune
from llmc.exporter import export_model
from llmc.ir_text import parse_ir, print_ir
from llmc.passes.tile import TUNED_ATTR


def tuned(cache, budget=60, extra="") -> str:
    return f'fuse,autotune{{candidates=3 repeats=3 budget={budget} cache="{cache}"}}{extra}'


def kernels(module):
    return [op for op in module.walk() if op.name == "kernel.kernel"]


def test_the_fastest_checked_candidate_is_recorded_and_tile_keeps_it(tmp_path):
    module = run_passes(parse_ir(MLP), tuned(tmp_path))
    for kop in kernels(module):
        summary = kop.attributes[TUNED_ATTR].data
        chosen = "x".join(map(str, kop.tiles.get_values())) + f"/s{kop.stages.value.data}"
        assert summary.startswith(chosen) and "also measured:" in summary and "us" in summary
    text = print_ir(module)
    after = run_passes(parse_ir(text), "tile{target=cpu}")  # a dump after autotune replays its decision
    assert [k.tiles.get_values() for k in kernels(after)] == [k.tiles.get_values() for k in kernels(module)]
    filecheck(print_ir(after), "// CHECK: llmc.autotune\n// CHECK: llmc.autotune\n")
    args = random_args(parse_ir(MLP), np.random.default_rng(0))
    rng = np.random.default_rng(1)
    weights = {name: rng.standard_normal(shape).astype(np.float32) * 0.2 for name, shape in
               (("fc.weight", (48, 32)), ("fc.bias", (48,)), ("proj.weight", (32, 48)))}
    lowered = run_passes(after, "lower-tile,coalesce,swizzle,pipeline,plan-memory")
    assert_close(run_ir(lowered, args, weights), run_ir(parse_ir(MLP), args, weights), tol=1e-4)


def test_a_kernel_of_quantized_weights_is_tuned_on_random_codes(tmp_path):
    """The tuner has no float weights to quantize: it runs codes, scales and zero points drawn in their
    formats' ranges, checked against the interpreter on the same values like any other candidate."""
    module = run_passes(parse_ir(MLP), 'quantize{weights="int4" activations="int8" head="same"},' + tuned(tmp_path))
    quantized = [k for k in kernels(module) if any(o.name == "graph.dequantize" for o in k.body.block.ops)]
    assert len(quantized) == 2
    for kop in quantized:
        assert "MISMATCH" not in kop.attributes[TUNED_ATTR].data


def test_an_attention_bounded_at_run_time_is_timed_over_all_its_keys():
    """A decode step's attention reads keys up to a position it is given; the tuner gives it the cache's last
    one (its integer inputs are otherwise zeros: one tile of the cache). Its other integer inputs stay zeros."""
    model, inputs = small_example("gpt2_decode")
    capacity = model.k_cache.shape[2]
    module = run_passes(export_model(model, inputs).module, "fuse")
    (attention,) = [k for k in kernels(module) if k.kind.data == "attention"]
    bounds = autotune.key_bounds(attention)
    assert list(bounds.values()) == [capacity - 1]
    (position,) = bounds
    assert attention.inputs[position].type.element_type.width.data == 64  # the step's int64 position
    _, _, values = autotune.standalone(attention, [None])
    assert (values[position] == capacity - 1).all()
    others = [k for k in kernels(module) if k.kind.data != "attention"]
    assert others and not any(autotune.key_bounds(k) for k in others)


def test_an_explicit_tile_option_still_wins_over_a_measured_decision(tmp_path):
    module = run_passes(parse_ir(MLP), tuned(tmp_path, extra=",tile{matmul=16,16,16}"))
    assert all(tuple(k.tiles.get_values()) == (16, 16, 16) for k in kernels(module))


def test_a_second_compile_measures_nothing(tmp_path, monkeypatch):
    first = run_passes(parse_ir(MLP), tuned(tmp_path))

    def must_not_run(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(autotune, "tune_kernels", must_not_run)
    second = run_passes(parse_ir(MLP), tuned(tmp_path))
    for a, b in zip(kernels(first), kernels(second)):
        assert a.tiles.get_values() == b.tiles.get_values() and b.attributes[TUNED_ATTR].data.find("; cached") > 0


def test_layers_of_the_same_shape_are_measured_once(tmp_path, monkeypatch):
    """Kernels that differ only in the weights they read (their body's arguments carry the weights' names) and in
    their source lines share one measurement: every layer of a model was measured again. A kernel of another
    shape is measured on its own."""
    import torch

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(3))
            self.head = torch.nn.Linear(32, 48)

        def forward(self, x):
            x = torch.relu(self.layers[0](x))
            x = torch.relu(self.layers[1](x))  # the same computation written on other lines
            x = torch.relu(self.layers[2](x))
            return self.head(x)

    measured = []
    tune = autotune.tune_kernels
    monkeypatch.setattr(autotune, "tune_kernels", lambda kops, *rest: measured.extend(kops) or tune(kops, *rest))
    module = run_passes(export_model(Stack().eval(), (torch.randn(4, 32),)).module, tuned(tmp_path))
    assert len(kernels(module)) == 4
    assert [k.kernel_name.data for k in measured] == [kernels(module)[0].kernel_name.data, kernels(module)[3].kernel_name.data]
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 2
    summaries = [k.attributes[TUNED_ATTR].data for k in kernels(module)]
    assert ["; cached" in s for s in summaries] == [False, True, True, False]


def test_a_compile_into_an_empty_cache_builds_its_candidates_there(tmp_path, monkeypatch):
    """The candidates' libraries go to the tuner's cache folder with its measurements: they had gone to the
    environment's build cache, so a benchmark's "cold" compile into an empty folder reused them."""
    elsewhere = tmp_path / "environment"
    monkeypatch.setenv("LLMC_CACHE_DIR", str(elsewhere))
    run_passes(parse_ir(MLP), tuned(tmp_path / "cold"))
    assert list((tmp_path / "cold").glob("*/*/kernels.so"))
    assert not list(elsewhere.glob("*/*/kernels.so"))


def test_a_corrupt_entry_is_measured_again(tmp_path):
    run_passes(parse_ir(MLP), tuned(tmp_path))
    entries = list((tmp_path / "autotune").glob("*.json"))
    assert len(entries) == 2
    for entry in entries:
        entry.write_text("{not json")
    again = run_passes(parse_ir(MLP), tuned(tmp_path))
    assert all("; cached" not in k.attributes[TUNED_ATTR].data for k in kernels(again))
    assert all(json.loads(e.read_text())["measured"] for e in entries)


def test_another_host_does_not_reuse_the_measurements(tmp_path, monkeypatch):
    run_passes(parse_ir(MLP), tuned(tmp_path))
    import llmc.target

    monkeypatch.setattr(llmc.target, "host_cpu_name", lambda: "Another CPU")
    run_passes(parse_ir(MLP), tuned(tmp_path))
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 4


def test_other_llmc_code_does_not_reuse_the_measurements(tmp_path, monkeypatch):
    """A measurement is worth what the code that made and timed the kernel was: edited code measures again."""
    run_passes(parse_ir(MLP), tuned(tmp_path))
    monkeypatch.setattr(autotune, "code_digest", lambda: "edited")
    autotune.llmc_version.cache_clear()
    try:
        run_passes(parse_ir(MLP), tuned(tmp_path))
    finally:
        autotune.llmc_version.cache_clear()
    assert len(list((tmp_path / "autotune").glob("*.json"))) == 4


def test_the_code_digest_follows_the_modules_contents(tmp_path, monkeypatch):
    import llmc.dialects

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "module.py").write_text("x = 1\n")
    monkeypatch.setattr(llmc.dialects, "__path__", [*llmc.dialects.__path__, str(extra)])
    before = autotune.code_digest()
    (extra / "notes.txt").write_text("not code")
    assert autotune.code_digest() == before
    (extra / "module.py").write_text("x = 2\n")
    assert autotune.code_digest() != before


def test_no_budget_means_the_model_decides(tmp_path):
    module = run_passes(parse_ir(MLP), tuned(tmp_path, budget=-1) + ",tile")
    assert all(TUNED_ATTR not in k.attributes and k.tiles for k in kernels(module))
    assert not (tmp_path / "autotune").exists() or not list((tmp_path / "autotune").iterdir())


def test_a_candidate_that_disagrees_with_the_interpreter_is_disqualified(tmp_path, monkeypatch):
    interpret = autotune.interpret_reference

    def off_by_one(*args):
        return [r + 1.0 for r in interpret(*args)]

    monkeypatch.setattr(autotune, "interpret_reference", off_by_one)
    module = run_passes(parse_ir(MLP), tuned(tmp_path) + ",tile")
    assert all(TUNED_ATTR not in k.attributes for k in kernels(module))  # nothing valid: the model decides
    for entry in (tmp_path / "autotune").glob("*.json"):
        assert all(m["us"] is None for m in json.loads(entry.read_text())["measured"])


@pytest.mark.parametrize("setting, expected", [("0", None), ("off", None), ("on", 60.0), ("12.5", 12.5)])
def test_the_environment_sets_the_budget(setting, expected, monkeypatch):
    from llmc.api import autotune_budget

    monkeypatch.setenv("LLMC_AUTOTUNE", setting)
    assert autotune_budget(None, "cpu", "c") == expected
    assert autotune_budget(None, "cpu-avx2", "c") is None and autotune_budget(True, "cpu", "triton") is None


MODEL = """import torch
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
example_inputs = (torch.randn(16, 32),)
"""


def test_llmc_compile_tunes_on_the_host_and_reports_it(tmp_path, monkeypatch, capsys):
    from llmc.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.py").write_text(MODEL)
    assert main(["compile", "m.py", "--autotune-budget", "30", "--dump-dir", "tuned"]) == 0
    out = capsys.readouterr().out
    assert "autotuned on this host" in out and "also measured" in out
    assert "llmc.autotune" in (tmp_path / "tuned" / "02-autotune.mlir").read_text()  # the dump replays it
    assert main(["compile", "m.py", "--no-autotune", "--dump-dir", "plain"]) == 0
    assert "autotuned" not in capsys.readouterr().out and not (tmp_path / "plain" / "02-autotune.mlir").exists()


def test_torch_compile_tunes_in_the_max_autotune_modes_only():
    from llmc.options import BackendOptions

    assert BackendOptions.from_torch_compile("max-autotune", None).autotune_setting() is True
    assert BackendOptions.from_torch_compile(None, None).autotune_setting() is False
    assert BackendOptions.from_torch_compile(None, {"autotune": 20}).autotune_setting() == 20
