"""Load a built library in-process and call its entry point with torch tensors."""

from __future__ import annotations

import ctypes
import statistics
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from llmc.backends.c.module import CSource
from llmc.dtypes import torch_dtype
from llmc.errors import BuildError, LlmcError


class CLibrary:
    """One context of a compiled graph: packed weights bound, arena allocated, ready to run."""

    def __init__(self, library: Path, source: CSource, weights: Mapping[str, np.ndarray]):
        try:
            self.lib = ctypes.CDLL(str(library))
        except OSError as error:
            raise BuildError(f"cannot load {library}: {error}") from None
        self.lib.llmc_create.restype = ctypes.c_void_p
        self.lib.llmc_create.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.lib.llmc_forward.restype = ctypes.c_int
        self.lib.llmc_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]
        self.lib.llmc_destroy.argtypes = [ctypes.c_void_p]
        self.lib.llmc_forward_profiled.restype = ctypes.c_int
        self.lib.llmc_forward_profiled.argtypes = [*self.lib.llmc_forward.argtypes, ctypes.POINTER(ctypes.c_double)]
        self.source = source
        self.input_dtypes = [torch_dtype(element) for element in source.input_elements]
        self.output_dtypes = [torch_dtype(element) for element in source.output_elements]
        self.lock = threading.Lock()
        self.arrays = [slot.materialise(weights) for slot in source.weights]
        pointers = (ctypes.c_void_p * max(1, len(self.arrays)))(*[a.ctypes.data for a in self.arrays])
        self.context = self.lib.llmc_create(pointers)
        if not self.context:
            raise LlmcError("the compiled graph could not allocate its buffers (out of memory)")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(inputs)

    def profile(self, inputs: tuple[torch.Tensor, ...], repeats: int,
                between: Callable[[], object] | None = None) -> dict[str, float]:
        """Median microseconds per kernel over `repeats` forward calls (after one warm-up), in steady
        state: the outputs are written into the same tensors each time, so first-touch page faults
        of freshly allocated outputs are not charged to the kernels. `between` runs after each call (the
        bench's probes, timed in rotation with the kernels), followed by an untimed call that brings the
        kernels' data back into the caches it swept, so each timed call starts from the same steady state."""
        launches = self.source.launches
        outputs = self.run(inputs)
        samples: list[dict[str, float]] = []
        for _ in range(max(1, repeats)):
            seconds = (ctypes.c_double * max(1, len(launches)))()
            self.run(inputs, seconds, outputs)
            call: dict[str, float] = {}
            for name, spent in zip(launches, seconds):
                call[name] = call.get(name, 0.0) + spent * 1e6
            samples.append(call)
            if between is not None:
                between()
                self.run(inputs, None, outputs)
        return {name: statistics.median(s[name] for s in samples) for name in samples[0]}

    def run(self, inputs, seconds=None, outputs=None) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.source.input_shapes):
            raise LlmcError(f"the compiled graph takes {len(self.source.input_shapes)} inputs, got {len(inputs)}")
        arguments = []
        for index, (tensor, shape, dtype) in enumerate(zip(inputs, self.source.input_shapes, self.input_dtypes)):
            if tuple(tensor.shape) != shape:
                raise LlmcError(f"input {index} has shape {tuple(tensor.shape)}; the graph was compiled for {shape}")
            if tensor.dtype != dtype or tensor.device.type != "cpu":
                raise LlmcError(
                    f"input {index} is a {tensor.dtype} tensor on {tensor.device}; the graph was compiled for "
                    f"{dtype} CPU tensors"
                )
            if index in self.source.output_aliases.values() and not tensor.is_contiguous():
                raise LlmcError(f"input {index} is updated in place (a cache) and must be contiguous")
            arguments.append(tensor.detach().contiguous())
        aliases = self.source.output_aliases  # outputs written in place into an input (a cache): its storage
        if outputs is None:
            outputs = [arguments[aliases[i]] if i in aliases else torch.empty(shape, dtype=dtype)
                       for i, (shape, dtype) in enumerate(zip(self.source.output_shapes, self.output_dtypes))]
        outputs = list(outputs)
        for output, argument in aliases.items():
            outputs[output] = arguments[argument]
        in_ptrs = (ctypes.c_void_p * max(1, len(arguments)))(*[t.data_ptr() for t in arguments])
        out_ptrs = (ctypes.c_void_p * max(1, len(outputs)))(*[t.data_ptr() for t in outputs])
        # ctypes drops the GIL during the call; one context's arena must not serve two calls at once
        with self.lock:
            status = (
                self.lib.llmc_forward(self.context, in_ptrs, out_ptrs)
                if seconds is None
                else self.lib.llmc_forward_profiled(self.context, in_ptrs, out_ptrs, seconds)
            )
        if status == -1:
            raise LlmcError("the compiled graph's context is not initialised")
        if status:
            kernel = self.source.status_kernels.get(status, "?")
            raise LlmcError(f"an index is out of range in kernel @{kernel} (a gather or embedding lookup, or a "
                            "cache write past its capacity, got an index outside its table, as eager would refuse "
                            "it; nothing was written out of bounds)")
        return tuple(outputs)

    def __del__(self):
        context, lib = getattr(self, "context", None), getattr(self, "lib", None)
        if context and lib is not None:
            lib.llmc_destroy(context)
            self.context = None
