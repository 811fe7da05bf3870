"""When llmc fails on input it accepted: an InternalError that says where, and a reproducer on disk.

An unexpected exception inside a stage (the importer, a pass, a backend) is llmc's bug, never the
user's. The error names the stage and the IR op or FX node being handled when it happened (found
on the traceback's frames), and writes what it takes to replay that stage alone into a folder it
names: the input IR of the failing pass and the exact `llmc opt -p ...` command, the final IR and
the `llmc opt --emit c` command for a backend, or the ATen graph as a model file for the importer.
As with Inductor's repro scripts, the files are the bug report.

The folder is `$LLMC_REPRO_DIR`, else `llmc-repro/` in the working directory (the system's temporary
folder when that is not writable); each reproducer gets a subfolder named after its stage and content.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from llmc.errors import InternalError


def repro_root() -> Path:
    return Path(os.environ.get("LLMC_REPRO_DIR") or "llmc-repro")


def failing_site(error: BaseException) -> str:
    """' at op graph.softmax' / ' at FX node aten.sort.default (sort_1)': the innermost IR op or FX node a
    frame of the traceback was working on, or '' when none was."""
    from torch.fx import Node
    from xdsl.ir import Operation

    tb, frames = error.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        values = sorted(frame.f_locals.items(), key=lambda item: item[0] not in ("op", "node"))
        for _, value in values:
            if isinstance(value, Operation):
                return f" at op {value.name}"
            if isinstance(value, Node) and value.op == "call_function":
                return f" at FX node {value.target} ({value.name})"
    return ""


def write_reproducer(stage: str, files: dict[str, str | bytes], replay: str) -> tuple[Path, str]:
    """Write `files` into a fresh folder; returns it and the replay command with its paths filled in
    (`{dir}` in `replay` is the folder)."""
    digest = hashlib.sha256(b"".join(f if isinstance(f, bytes) else f.encode() for f in files.values()))
    name = f"{re.sub(r'[^a-z0-9]+', '-', stage.lower()).strip('-')}-{digest.hexdigest()[:10]}"
    last: OSError | None = None
    for root in (repro_root(), Path(tempfile.gettempdir()) / "llmc-repro"):
        folder = root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for file, content in files.items():
                path = folder / file
                path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        except OSError as error:
            last = error
            continue
        command = replay.replace("{dir}", str(folder))  # not format(): pass options are written in braces
        (folder / "replay.sh").write_text(f"#!/bin/sh\n# replays the failure llmc reported in {stage}\n{command}\n")
        return folder, command
    raise last


def internal_error(stage: str, error: BaseException, files: dict[str, str | bytes] | None = None,
                   replay: str = "") -> InternalError:
    """The InternalError for an unexpected exception in `stage`, with a reproducer written when `files`
    are given."""
    message = f"llmc bug in {stage}{failing_site(error)}: {type(error).__name__}: {error}"
    if files:
        try:
            folder, command = write_reproducer(stage, files, replay)
            message += f". Reproducer written to {folder}/; replay with: {command}"
        except OSError as failure:
            message += f" (no reproducer: {failure})"
    return InternalError(message + " (please report it with the reproducer)")


def pass_reproducer(stage: str, error: BaseException, input_ir: str, pass_spec: str) -> InternalError:
    return internal_error(stage, error, {"input.mlir": input_ir}, "llmc opt {dir}/input.mlir -p '" + pass_spec + "'")


def backend_reproducer(backend: str, error: BaseException, final_ir: str) -> InternalError:
    return internal_error(f"the {backend} backend", error, {"final.mlir": final_ir},
                          f"llmc opt {{dir}}/final.mlir --emit {backend}")


def graph_arguments(gm, known: dict) -> list:
    """One value per placeholder: the weight or constant it was bound to, else a random tensor of the
    shape and dtype the graph recorded (zeros for integers: always valid indices)."""
    import torch

    arguments = []
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        value = known.get(node.name, node.meta.get("val"))
        if isinstance(value, torch.Tensor) and node.name not in known:
            shape = [int(size) for size in value.shape]
            value = (torch.randn(shape, dtype=value.dtype) if value.dtype.is_floating_point
                     else torch.zeros(shape, dtype=value.dtype))
        arguments.append(value)
    return arguments


def importer_reproducer(error: BaseException, gm, known: dict) -> InternalError:
    """The ATen graph the importer failed on, as a model file: `llmc compile model.py` replays it."""
    import io

    import torch

    files: dict[str, str | bytes] = {"graph.py": gm.print_readable(print_output=False)}
    try:
        buffer = io.BytesIO()
        torch.save({"graph_module": _detached(gm), "inputs": graph_arguments(gm, known)}, buffer)
        files["graph.pt"] = buffer.getvalue()
        files["model.py"] = MODEL_FILE
        replay = "llmc compile {dir}/model.py"
    except Exception:  # a graph that does not pickle still leaves its readable text
        replay = "(graph.py holds the ATen graph; it could not be saved to replay)"
    return internal_error("the importer", error, files, replay)


def _detached(gm):
    """The graph alone: export's GraphModule carries its tracer, which does not unpickle."""
    import torch

    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    module = torch.fx.GraphModule(gm, graph)
    module._tracer_cls = None
    return module


MODEL_FILE = '''"""Written by llmc: the ATen graph its importer failed on (graph.py is the same graph, readable),
with the weights it was given and random inputs of the recorded shapes."""

import pathlib

import torch

_saved = torch.load(pathlib.Path(__file__).with_name("graph.pt"), weights_only=False)
model = _saved["graph_module"]
example_inputs = tuple(_saved["inputs"])
'''
