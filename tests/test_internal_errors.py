"""No internal exception escapes: a failure inside the importer, a pass or a backend is an InternalError
that names the stage and the op, and writes a reproducer whose command replays the same failure; the
torch.compile backend runs such a graph in eager with a warning."""

from __future__ import annotations

import shlex
import warnings

import pytest
import torch

import llmc
from llmc.cli import run
from llmc.errors import InternalError
from llmc.passes.fuse import FusePass
from llmc.registry import default_pipeline

MODEL = """import torch
class M(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(torch.relu(x) * 2, dim=-1)
model = M()
example_inputs = (torch.randn(4, 8),)
"""


def block():
    """The model MODEL's file defines, and its example inputs: one definition for the API and the CLI."""
    namespace: dict = {}
    exec(MODEL, namespace)
    return namespace["model"], namespace["example_inputs"]


def explode(op):
    raise KeyError(f"no tile shape for {op.name}")  # stands for a bug met while rewriting `op`


@pytest.fixture
def repro_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_REPRO_DIR", str(tmp_path / "repro"))
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "repro"


@pytest.fixture
def broken_fuse(monkeypatch):
    def apply(self, ctx, module):
        for op in module.walk():
            if op.name == "graph.softmax":
                explode(op)

    monkeypatch.setattr(FusePass, "apply", apply)


def replay(message: str) -> list[str]:
    command = message.split("replay with: ", 1)[1].split(" (please report", 1)[0]
    words = shlex.split(command)
    assert words[0] == "llmc"
    return words[1:]


def test_a_failing_pass_names_pass_and_op_and_its_reproducer_replays(repro_dir, broken_fuse):
    with pytest.raises(InternalError, match=r"llmc bug in pass 'fuse' at op graph.softmax: KeyError") as caught:
        llmc.compile(*block())
    message = str(caught.value)
    (folder,) = list(repro_dir.iterdir())
    assert str(folder) in message and "input.mlir" in message
    assert "graph.softmax" in (folder / "input.mlir").read_text()  # the IR the pass was given
    assert (folder / "replay.sh").read_text().strip().endswith(message.split("replay with: ")[1].split(" (")[0])
    with pytest.raises(InternalError, match="pass 'fuse' at op graph.softmax"):
        run(replay(message))


def test_a_pass_with_options_in_braces_gets_its_reproducer_too(repro_dir, monkeypatch):
    """Pass options are written in braces (tile{target=cpu}): the replay command keeps them as they are."""
    from llmc.passes.tile import TilePass

    def apply(self, ctx, module):
        raise KeyError("boom")

    monkeypatch.setattr(TilePass, "apply", apply)
    passes = default_pipeline().replace("tile{target=cpu}", "tile{matmul=32,32,16}")
    with pytest.raises(InternalError, match=r"llmc bug in pass 'tile'") as caught:
        llmc.compile(*block(), passes=passes)
    message = str(caught.value)
    assert "Reproducer written to" in message and "tile{matmul=32,32,16}" in message.split("replay with: ")[1]


def test_a_pass_after_lowering_gets_exactly_the_ir_it_was_given(repro_dir, monkeypatch, tmp_path):
    """The runner keeps no copy of the lowered IR before each pass: the reproducer rebuilds it from the last
    graph-level snapshot. It must be the same IR the previous pass wrote out."""
    from llmc.passes.swizzle import SwizzlePass
    from llmc.pipeline import DumpOptions

    def apply(self, ctx, module):
        raise KeyError("boom")

    monkeypatch.setattr(SwizzlePass, "apply", apply)
    with pytest.raises(InternalError, match=r"llmc bug in pass 'swizzle'"):
        llmc.compile(*block(), dumps=DumpOptions(dump_dir=tmp_path / "dumps"), emit=lambda _: None)
    (folder,) = list(repro_dir.iterdir())
    (coalesced,) = (tmp_path / "dumps").glob("*-coalesce.mlir")
    assert "tile.load" in coalesced.read_text()
    assert (folder / "input.mlir").read_text() == coalesced.read_text()


def test_the_cli_reports_an_internal_error_in_one_line(repro_dir, broken_fuse, tmp_path, capsys):
    from llmc.cli import main

    model = tmp_path / "m.py"
    model.write_text(MODEL)
    assert main(["compile", str(model)]) == 1
    err = capsys.readouterr().err
    assert "llmc: error: llmc bug in pass 'fuse'" in err and "Traceback" not in err


def test_a_failing_importer_writes_a_model_file_that_replays(repro_dir, monkeypatch):
    import llmc.exporter as exporter

    importing = exporter._import_call

    def broken(node, ctx):  # (a handler's own exception is an UnsupportedOpError: a form it does not take)
        if node.target is torch.ops.aten.relu.default:
            raise IndexError("list index out of range")
        return importing(node, ctx)

    monkeypatch.setattr(exporter, "_import_call", broken)
    with pytest.raises(InternalError, match=r"the importer at FX node aten.relu.default \(relu\): IndexError") as caught:
        llmc.compile(*block())
    (folder,) = list(repro_dir.iterdir())
    assert {"graph.py", "graph.pt", "model.py", "replay.sh"} <= {p.name for p in folder.iterdir()}
    assert "aten.relu" in (folder / "graph.py").read_text()
    argv = replay(str(caught.value))
    assert argv == ["compile", str(folder / "model.py")]
    with pytest.raises(InternalError, match="the importer at FX node aten.relu.default"):
        run(argv)


def test_a_failing_backend_writes_the_final_ir_and_an_emit_command(repro_dir, monkeypatch):
    import llmc.backends.c as c_backend

    def render_module(module, lanes, **options):
        for op in module.walk():
            if op.name == "tile.kernel":
                explode(op)

    monkeypatch.setattr(c_backend, "render_module", render_module)
    with pytest.raises(InternalError, match="the c backend at op tile.kernel") as caught:
        llmc.compile(*block())
    argv = replay(str(caught.value))
    assert argv[0] == "opt" and argv[-2:] == ["--emit", "c"]
    assert "tile.kernel" in open(argv[1]).read()
    monkeypatch.undo()  # with the bug gone the same command renders the C
    assert run(argv) == 0


def test_torch_compile_runs_a_failing_graph_in_eager_with_a_warning(repro_dir, broken_fuse):
    torch._dynamo.reset()
    model, (x,) = block()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = torch.compile(model, backend="llmc")(x)
    torch.testing.assert_close(out, model(x))
    said = " ".join(str(w.message) for w in caught)
    assert "runs in eager" in said and "llmc bug in pass 'fuse'" in said and "replay with: llmc opt" in said
    torch._dynamo.reset()
