"""Bad input gives one clear error, never a traceback."""

import subprocess
import sys

import pytest
import torch

from llmc.errors import MalformedIRError, PassOptionError, UnsupportedOpError
from llmc.exporter import export_model
from llmc.ir_text import parse_ir
from llmc.registry import parse_passes


class UsesSort(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


def test_unknown_op_names_the_op_and_the_line():
    with pytest.raises(UnsupportedOpError, match=r"sort.*test_errors.py:\d+"):
        export_model(UsesSort(), (torch.randn(2, 4),))


def test_malformed_ir_reports_line_and_column():
    with pytest.raises(MalformedIRError, match=r"<input>:2:\d+"):
        parse_ir("func.func @f() {\n  %x = graph.add 3\n}")


def test_ill_typed_ir_is_rejected_by_the_verifier():
    text = """func.func @f(%a: tensor<2x3xf32>, %b: tensor<4xf32>) -> tensor<2x3xf32> {
  %c = graph.add %a, %b : (tensor<2x3xf32>, tensor<4xf32>) -> tensor<2x3xf32>
  func.return %c : tensor<2x3xf32>
}"""
    with pytest.raises(MalformedIRError, match="do not broadcast"):
        parse_ir(text)


@pytest.mark.parametrize("spec, message", [
    ("fuse,no-such-pass", "no-such-pass"),
    ("tile{matmul=3,4}", "powers of two"),
    ("pipeline{stages=0}", "at least 1"),
    ("tile{bogus=1}", "bogus"),
])
def test_bad_pass_name_or_option(spec, message):
    with pytest.raises(PassOptionError, match=message):
        from llmc.registry import make_context
        for p in parse_passes(spec):
            p.apply(make_context(), parse_ir("func.func @f() {\n  func.return\n}").clone())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llmc", *args], capture_output=True, text=True)


@pytest.mark.parametrize("body, message", [
    ("x = 1\n", "defines no `model`"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("import torch\nmodel = torch.nn.Linear(2, 2)\nexample_inputs = [3]\n", "tuple of tensors"),
    ("model = 5\nexample_inputs = ()\n", "torch.nn.Module"),
])
def test_bad_model_file_is_one_line_and_nonzero(tmp_path, body, message):
    path = tmp_path / "model.py"
    path.write_text(body)
    result = run_cli("compile", str(path))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_opt_replays_a_pass_and_rejects_bad_ir(tmp_path):
    bad = tmp_path / "bad.mlir"
    bad.write_text("func.func @f( {")
    result = run_cli("opt", str(bad), "-p", "fuse")
    assert result.returncode == 1 and "bad.mlir:1" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--print-ir-after=fsue", "--print-ir-before=lower_tile"])
def test_a_misspelt_pass_in_a_dump_flag_is_an_error_before_export(flag, tmp_path):
    never_loaded = tmp_path / "model.py"
    never_loaded.write_text("raise SystemExit('the model file was imported')\n")
    result = run_cli("compile", str(never_loaded), flag)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown pass" in result.stderr and "known passes: quantize, matmul-precision, fuse" in result.stderr
    piped = run_cli("compile", str(never_loaded), "-p", "fuse,nope")
    assert piped.returncode == 1 and "nope" in piped.stderr and "imported" not in piped.stderr


def test_cli_opt_without_passes_parses_verifies_and_prints(tmp_path):
    from conftest import MLP

    good = tmp_path / "mlp.mlir"
    good.write_text(MLP)
    result = run_cli("opt", str(good))
    assert result.returncode == 0 and "graph.linear" in result.stdout and "func.func @forward" in result.stdout
    bad = tmp_path / "bad.mlir"
    bad.write_text(MLP.replace("32x48xf32", "32x40xf32"))  # proj's weight no longer matches its input
    rejected = run_cli("opt", str(bad))
    assert rejected.returncode == 1 and "does not verify" in rejected.stderr
