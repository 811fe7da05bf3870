"""`torch.compile(model, backend="llmc")`: compile Dynamo's graphs with llmc.

Dynamo's graph goes through `aot_autograd` with `keep_inference_input_mutations`,
so llmc sees a functionalized ATen graph whose in-place updates of buffers and
inputs are explicit `copy_` ops (write-backs). Then:

- Partitioning: `CapabilityBasedPartitioner` with the importer's op table
  splits the graph; each supported partition is compiled by llmc, the rest
  runs in eager, with one warning per distinct unsupported op (name and line).
- Freezing: parameters and buffers arrive as graph inputs; llmc bakes them in
  as weights (packed once) and checks at each call that the same tensors, at
  the same version, are passed, recompiling if a weight was replaced or
  updated in place, as Inductor's freezing does.
- Symbolic shapes: a graph with SymInt inputs or symbolic sizes is compiled
  per concrete size behind llmc's own guard (the input shapes and SymInt
  values), never for one size silently; see docs/torch-compile.md.
- Autograd: llmc compiles inference graphs (under `torch.no_grad()` or
  `inference_mode()`); a graph recording autograd runs in eager, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch._dynamo.backends.common import aot_autograd

from llmc.options import BackendOptions

_WARNED: set[str] = set()  # one warning per distinct message per process


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


@dataclass
class GraphReport:
    """What happened to one Dynamo graph: for `llmc.explain` and the tests."""

    ops: int = 0
    partitions: list[dict] = field(default_factory=list)  # per llmc partition: ops, kernels, compiles
    eager_ops: list[str] = field(default_factory=list)  # "op (line): why" for each op left to eager
    note: str = ""


@dataclass
class BackendStats:
    """Counts across every graph this process compiled with llmc (llmc.dynamo_stats())."""

    graphs: list[GraphReport] = field(default_factory=list)
    llmc_runs: int = 0  # calls that ran llmc-compiled code
    compiles: int = 0  # llmc compilations (one per graph partition and concrete size)


STATS = BackendStats()


def llmc_backend(gm: torch.fx.GraphModule, example_inputs: list, mode: str | None = None,
                 options: dict | None = None):
    """The torch.compile backend registered as "llmc"."""
    from llmc.dynamo_graph import PartitionedGraph, dynamo_names

    settings = BackendOptions.from_torch_compile(mode, options)
    report = GraphReport()
    names = dynamo_names(gm)
    params = {i for i, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter)}
    buffers = {i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
               if i not in params and _is_buffer(n)}

    def inference(aot_gm: torch.fx.GraphModule, aot_inputs: list):
        STATS.graphs.append(report)
        report.ops = sum(1 for n in aot_gm.graph.nodes if n.op == "call_function")
        if len(aot_inputs) != len(example_inputs):
            report.note = "aot_autograd changed the inputs (tensor subclasses?); ran in eager"
            warn_once(f"llmc: {report.note}")
            return aot_gm
        graph = PartitionedGraph(aot_gm, list(example_inputs), params, buffers, names, settings, report, STATS)
        try:
            return graph.build()
        except Exception as error:  # partitioning failed: llmc's bug, reported, and the graph runs in eager
            from llmc.errors import LlmcError
            from llmc.reproducer import internal_error

            if not isinstance(error, LlmcError):
                error = internal_error("the torch.compile backend's partitioner", error)
            report.note = f"ran in eager: {error}"
            warn_once(f"llmc: this graph runs in eager: {error}")
            return aot_gm

    def training(aot_gm: torch.fx.GraphModule, aot_inputs: list):
        STATS.graphs.append(report)
        report.note = "records autograd: ran in eager"
        warn_once("llmc compiles inference graphs; this graph records autograd (run the model under torch.no_grad() "
                  "or torch.inference_mode() to compile it), so it runs in eager")
        return aot_gm

    return aot_autograd(fw_compiler=training, inference_compiler=inference,
                        keep_inference_input_mutations=True)(gm, example_inputs)


def source_name(node: torch.fx.Node) -> str:
    """Dynamo's name for where a placeholder came from: "L['self']._modules['mlp']._parameters['weight']"."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = source.name() if callable(getattr(source, "name", None)) else getattr(source, "name", "")
    return name or ""


def _is_buffer(node: torch.fx.Node) -> bool:
    return "_buffers" in source_name(node)


def dynamo_stats() -> BackendStats:
    return STATS


def reset_stats() -> None:
    STATS.graphs.clear()
    STATS.llmc_runs = 0
    STATS.compiles = 0

