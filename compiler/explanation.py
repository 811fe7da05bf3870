"""`llmc.explain(model, inputs)`: which ops of a model run in llmc kernels under torch.compile, which in
eager, and why — Dynamo's graph breaks, the ops llmc left to eager, and each compiled partition."""

from __future__ import annotations

import torch

from llmc.dynamo_backend import dynamo_stats, reset_stats
from llmc.exporter import split_inputs


def explain(model: torch.nn.Module, example_inputs, **compile_options) -> str:
    """Run the model once through torch.compile(backend="llmc") and describe what ran where."""
    args, kwargs = split_inputs(example_inputs)
    torch._dynamo.reset()
    reset_stats()
    breaks = torch._dynamo.explain(model)(*args, **kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="llmc", **compile_options)
    with torch.no_grad():
        compiled(*args, **kwargs)
    stats = dynamo_stats()
    lines = [f"torch.compile(backend='llmc'): {len(stats.graphs)} graph(s), {breaks.graph_break_count} graph "
             f"break(s), {stats.compiles} llmc compilation(s)"]
    for reason in breaks.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
        lines.append(f"  graph break{where}: {reason.reason}")
    for index, report in enumerate(stats.graphs):
        lines.append(f"graph {index}: {report.ops} ATen ops" + (f" ({report.note})" if report.note else ""))
        for part in report.partitions:
            lines.append(f"  llmc  {part['name']}: {part['ops']} ops -> {part['kernels']} kernels "
                         f"({part['compiles']} compilation(s))")
        for op in report.eager_ops:
            lines.append(f"  eager {op}")
        if not report.partitions and not report.eager_ops:
            lines.append("  (nothing to compile)")
    return "\n".join(lines)
