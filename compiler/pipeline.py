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
        before = module.clone()  # the input of the pass that runs next: what a reproducer replays
        for i, p in enumerate(self.passes, start=start_index + 1):
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
                raise pass_reproducer(f"pass '{p.name}'", error, print_ir(before), spec) from error
            self.timings.append(PassTiming(p.name, time.perf_counter() - begin))
            before = self.snapshots[p.name] = module.clone()
            if self.dumps.print_after_all or p.name in self.dumps.print_after:
                self.emit(f"// -----// IR Dump After {p.name} //----- //\n{print_ir(module)}")
            self._dump(module, i, p.name)
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
