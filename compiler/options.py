"""Options are values: what the torch.compile backend was asked for, validated once at the edge."""

from __future__ import annotations

from dataclasses import dataclass

from llmc.errors import PassOptionError
from llmc.quantization import QuantFormat

# torch.compile's modes: llmc has no CUDA graphs; the max-autotune modes switch its autotuner on, as Inductor's
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTION_KEYS = {
    "target": "llmc target (cpu, cpu-avx2, ..., triton)",
    "backend": "c, triton or interpret",
    "passes": "a pass pipeline instead of the target's default",
    "max_specializations": "concrete sizes one symbolic graph may be compiled for before it runs in eager",
    "quantize": "weight-only quantization of the linear layers: int8, int4, int4:G (32, 64, 128, channel)[:asym]",
    "matmul_precision": "f32 or bf16 (an fp32 model's linear layers in bf16 with f32 accumulation)",
    "autotune": "measure tile decisions on this host: True, False or a budget in seconds (default: on in the "
                "max-autotune modes, as Inductor's autotuning is)",
}


@dataclass(frozen=True)
class BackendOptions:
    target: str = "cpu"
    backend: str | None = None
    passes: str | None = None
    mode: str = "default"
    max_specializations: int = 16
    quantize: str | None = None
    autotune: bool | float | None = None
    matmul_precision: str = "f32"

    def autotune_setting(self) -> bool | float:
        return self.autotune if self.autotune is not None else self.mode.startswith("max-autotune")

    @staticmethod
    def from_torch_compile(mode: str | None, options: dict | None) -> BackendOptions:
        mode = mode or "default"
        if mode not in MODES:
            raise PassOptionError(f"torch.compile mode '{mode}' is not one of {', '.join(MODES)}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            known = "; ".join(f"{k}: {v}" for k, v in OPTION_KEYS.items())
            raise PassOptionError(f"unknown llmc option(s) {unknown}; llmc takes {known}")
        if options.get("quantize"):
            QuantFormat.parse(options["quantize"])  # refused here, before any graph is compiled
        if options.get("matmul_precision", "f32") not in ("f32", "bf16"):
            raise PassOptionError(f"matmul_precision must be f32 or bf16, not '{options['matmul_precision']}'")
        return BackendOptions(mode=mode, **options)
