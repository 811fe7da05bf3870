"""Run passes with IR dumps and per-pass timing: the driver behind `llmc compile` and `llmc opt`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from llmc.errors import LlmcError, write_output
from llmc.ir_text import print_ir
from llmc.registry import make_context
from llmc.reproducer import pass_reproducer


@dataclass(frozen=True)
class DumpOptions:
    print_after_all: bool = False
    print_after: frozenset[str] = frozenset()
    print_before: frozenset[str] = frozenset()
    dump_dir: Path | None = None


@dataclass
class PassTiming:
    name: str
    seconds: float


# The graph-level passes: their output is small (a clone costs ~2 ms) and callers read it (the fused graph,
# the tile decisions, the quantized weights). After lowering, a clone of the GPT-2 block costs 6-14 ms.
SNAPSHOT_PASSES = frozenset({"quantize", "matmul-precision", "fuse", "autotune", "tile"})


@dataclass
class PassRunner:
    passes: Sequence[ModulePass]
    dumps: DumpOptions = field(default_factory=DumpOptions)
    emit: Callable[[str], None] = print
    timings: list[PassTiming] = field(default_factory=list)
    snapshots: dict[str, ModuleOp] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None  # told each pass's name as it starts

    def run(self, module: ModuleOp, start_index: int = 0) -> ModuleOp:
        ctx = make_context()
        self._dump(module, start_index, "input")
        # what a failing pass's reproducer is rebuilt from: a kept IR and the index of the next pass to apply
        replay_from = (module.clone(), 0)
        for n, p in enumerate(self.passes):
            i = start_index + 1 + n
            if self.dumps.print_before and p.name in self.dumps.print_before:
                self.emit(f"// -----// IR Dump Before {p.name} //----- //\n{print_ir(module)}")
            if self.progress:
                self.progress(p.name)
            begin = time.perf_counter()
            try:
                p.apply(ctx, module)
                module.verify()
            except LlmcError:
                raise
            except Exception as error:  # a verifier failure after a pass is the pass's bug too
                spec = str(p.pipeline_pass_spec())
                raise pass_reproducer(f"pass '{p.name}'", error, print_ir(self._input_of(n, *replay_from)),
                                      spec) from error
            self.timings.append(PassTiming(p.name, time.perf_counter() - begin))
            if p.name in SNAPSHOT_PASSES:
                self.snapshots[p.name] = module.clone()
                replay_from = (self.snapshots[p.name], n + 1)
            if self.dumps.print_after_all or p.name in self.dumps.print_after:
                self.emit(f"// -----// IR Dump After {p.name} //----- //\n{print_ir(module)}")
            self._dump(module, i, p.name)
        return module

    def _input_of(self, failing: int, kept: ModuleOp, applied: int) -> ModuleOp:
        """The IR pass `failing` was given, rebuilt by applying the passes between a kept IR and it again
        (passes are deterministic) instead of cloning the whole module before every pass."""
        module = kept.clone()
        ctx = make_context()
        for p in self.passes[applied:failing]:
            p.apply(ctx, module)
        return module

    def _dump(self, module: ModuleOp, index: int, name: str) -> None:
        if self.dumps.dump_dir is None:
            return
        write_output(self.dumps.dump_dir / f"{index:02d}-{name}.mlir", print_ir(module))

    def timing_table(self) -> str:
        total = sum(t.seconds for t in self.timings) or 1e-9
        lines = [f"{'pass':<14}{'ms':>10}{'share':>8}"]
        lines += [f"{t.name:<14}{t.seconds * 1e3:>10.2f}{t.seconds / total:>8.0%}" for t in self.timings]
        return "\n".join(lines)
