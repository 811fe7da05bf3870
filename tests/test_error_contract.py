"""The error contract: every bad input gives one LlmcError subclass with a message that says what is
wrong, and exit status 1 from the CLI, never a traceback. One table, one row per kind of bad input."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest

from llmc.cli import main, run
from llmc.errors import (BuildError, LlmcError, MalformedIRError, ModelError, ModelFileError, OutputError,
                         PassOptionError, UnsupportedOpError)

MODEL = """import torch
class M(torch.nn.Module):
    def forward(self, x):
        return {body}
model = M()
example_inputs = (torch.randn(4, 8{dtype}),)
"""
GOOD_MODEL = MODEL.format(body="torch.relu(x) * 2", dtype="")
GOOD_IR = """func.func @f(%a: tensor<2xf32>) -> tensor<2xf32> {
  func.return %a : tensor<2xf32>
}
"""
BROADCAST_IR = """func.func @f(%a: tensor<2x3xf32>, %b: tensor<4xf32>) -> tensor<2x3xf32> {
  %c = graph.add %a, %b : (tensor<2x3xf32>, tensor<4xf32>) -> tensor<2x3xf32>
  func.return %c : tensor<2x3xf32>
}
"""


@dataclass(frozen=True)
class Row:
    """argv may name {tmp} (the test's folder); `files` are written there first."""

    argv: tuple[str, ...]
    error: type[LlmcError]
    message: str  # a regular expression the message must match
    files: dict[str, str | bytes] = field(default_factory=dict)
    block_triton: bool = False


def model(body: str, dtype: str = "") -> dict[str, str]:
    return {"m.py": MODEL.format(body=body, dtype=dtype)}


CONTRACT = {
    # IR given to `llmc opt`
    "non-MLIR text": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "cannot parse IR",
                         {"a.mlir": "hello world\n"}),
    "a Python file given as IR": Row(("opt", "{tmp}/m.py", "-p", "fuse"), MalformedIRError,
                                     "closing string literal", {"m.py": '"""A docstring\n' + GOOD_MODEL}),
    "binary bytes": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "not UTF-8", {"a.mlir": b"\xff\xfe\x00ir"}),
    "truncated IR": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "cannot parse IR", {"a.mlir": GOOD_IR[:40]}),
    "an unknown dialect": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "foo.bar is not registered",
                              {"a.mlir": GOOD_IR.replace("func.return %a", "%b = foo.bar %a : (tensor<2xf32>) -> "
                                                         "tensor<2xf32>\n  func.return %b")}),
    "an unknown op of a known dialect": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "graph.nosuch",
                                            {"a.mlir": BROADCAST_IR.replace("graph.add", "graph.nosuch")}),
    "a verifier failure": Row(("opt", "{tmp}/a.mlir"), MalformedIRError, "do not broadcast",
                              {"a.mlir": BROADCAST_IR}),
    "a missing IR file": Row(("opt", "{tmp}/none.mlir"), LlmcError, "cannot read .*none.mlir"),
    # pass pipelines and options
    "an unknown pass": Row(("opt", "{tmp}/a.mlir", "-p", "fuse,fsue"), PassOptionError, "fsue.*known passes",
                           {"a.mlir": GOOD_IR}),
    "a bad pass option": Row(("opt", "{tmp}/a.mlir", "-p", "tile{matmul=3}"), PassOptionError, "powers of two",
                             {"a.mlir": GOOD_IR}),
    "an unknown pass option": Row(("opt", "{tmp}/a.mlir", "-p", "pipeline{bogus=1}"), PassOptionError, "bogus",
                                  {"a.mlir": GOOD_IR}),
    "a malformed pipeline": Row(("opt", "{tmp}/a.mlir", "-p", "fuse{"), PassOptionError, "bad pass",
                                {"a.mlir": GOOD_IR}),
    "a typo in --print-ir-after": Row(("compile", "{tmp}/m.py", "--print-ir-after", "fsue"), PassOptionError,
                                      "unknown pass 'fsue' in --print-ir-after", model("x")),
    "an unknown target": Row(("compile", "{tmp}/m.py", "--target", "tpu"), PassOptionError, "unknown target 'tpu'",
                             model("x")),
    "a bad quantization format": Row(("compile", "{tmp}/m.py", "--quantize", "int3"), PassOptionError,
                                     "unknown quantization 'int3'", model("x")),
    # model files
    "a missing model file": Row(("compile", "{tmp}/none.py"), ModelFileError, "no such model file"),
    "Python that is not a model": Row(("compile", "{tmp}/m.py"), ModelFileError, "defines no `model`",
                                      {"m.py": "x = 1\n"}),
    "a model file with a syntax error": Row(("compile", "{tmp}/m.py"), ModelFileError, "SyntaxError",
                                            {"m.py": "import torch\ndef f(:\n"}),
    "a model file that raises": Row(("compile", "{tmp}/m.py"), ModelFileError, "RuntimeError: boom",
                                    {"m.py": "raise RuntimeError('boom')\n"}),
    "inputs that are not tensors": Row(("compile", "{tmp}/m.py"), ModelFileError, "tuple of tensors",
                                       {"m.py": "import torch\nmodel = torch.nn.Linear(2, 2)\nexample_inputs = [3]\n"}),
    "a model whose forward raises": Row(("compile", "{tmp}/m.py"), ModelError,
                                        r"fails in eager PyTorch too \(at m.py:4\): RuntimeError", model("x.view(7, 7)")),
    # what llmc cannot compile
    "an unsupported op: sort": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, r"aten.sort.*\(at m.py:4\)",
                                   model("torch.sort(x, dim=-1).values")),
    "an unsupported op: nonzero": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "aten.nonzero",
                                      model("torch.nonzero(x)")),
    "an unsupported op: FFT": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "aten._fft_r2c",
                                  model("torch.fft.rfft(x).abs()")),
    "an unsupported op: QR": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "aten.linalg_qr",
                                 model("torch.linalg.qr(x).Q")),
    "an unsupported dtype: float64": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "torch.float64",
                                         model("x * 2", ", dtype=torch.float64")),
    "an unsupported dtype: complex": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "torch.complex64",
                                         model("x * 2", ", dtype=torch.complex64")),
    "an unsupported dtype inside the graph": Row(("compile", "{tmp}/m.py"), UnsupportedOpError, "float64",
                                                 model("(x.double() * 2).float()")),
    # outputs
    "-o into a folder that is a file": Row(("compile", "{tmp}/m.py", "-o", "{tmp}/m.py/out.mlir"), OutputError,
                                           "cannot write .*out.mlir", model("x * 2")),
    "an unwritable --out-dir": Row(("compile", "{tmp}/m.py", "--out-dir", "{tmp}/m.py/out"), OutputError,
                                   "cannot write", model("x * 2")),
    "an unwritable --dump-dir": Row(("compile", "{tmp}/m.py", "--dump-dir", "{tmp}/m.py/dumps"), OutputError,
                                    "cannot write .*00-input.mlir", model("x * 2")),
    "llmc opt -o into a folder that is a file": Row(("opt", "{tmp}/a.mlir", "-o", "{tmp}/a.mlir/x"), OutputError,
                                                    "cannot write", {"a.mlir": GOOD_IR}),
    # tools
    "a missing C compiler": Row(("compile", "{tmp}/m.py", "--cc", "{tmp}/no-such-cc"), BuildError,
                                "no C compiler found", model("x * 2")),
    "a failing C compiler": Row(("compile", "{tmp}/m.py", "--cc", "false"), BuildError, "C compiler failed",
                                model("x * 2")),
    "a bad C flag": Row(("compile", "{tmp}/m.py", "--cflags", "-O2 --no-such-flag"), BuildError,
                        "no-such-flag", model("x * 2")),
    "Triton missing": Row(("compile", "{tmp}/m.py", "--target", "gpu"), BuildError, r"pip install 'llmc\[triton\]'",
                          model("x * 2"), block_triton=True),
    # llmc generate
    "an unknown contender": Row(("generate", "gpt2", "--only", "vllm"), LlmcError, "unknown contender 'vllm'"),
    "an unknown model family": Row(("generate", "gpt5"), LlmcError, "gpt5"),
}


def _argv(row: Row, tmp_path) -> list[str]:
    for name, content in row.files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return [a.replace("{tmp}", str(tmp_path)) for a in row.argv]


@pytest.fixture
def contract_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))  # the compiler rows must not hit a cached build
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("case", list(CONTRACT))
def test_error_contract(case, tmp_path, contract_env, monkeypatch, capsys):
    row = CONTRACT[case]
    if row.block_triton:
        monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    argv = _argv(row, tmp_path)
    with pytest.raises(row.error, match=row.message):
        run(argv)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmc: error: ") or "\nllmc: error: " in err
    assert "Traceback" not in err


def test_the_contract_covers_every_error_class():
    from llmc import errors

    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, LlmcError)}
    covered = {row.error for row in CONTRACT.values()}
    # InternalError and InterpretError have their own tests (tests/test_internal_errors.py, the interpreter's)
    assert classes - covered == {errors.InternalError, errors.InterpretError}
    assert len(CONTRACT) >= 30
