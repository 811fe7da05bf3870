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
        # what each call checks its inputs against, and the pointer arrays it fills (under the lock): a decode
        # step's kernels take about a millisecond, and each call's Python is paid on every token
        self.expected_inputs = [(torch.Size(shape), torch_dtype(element))
                                for shape, element in zip(source.input_shapes, source.input_elements)]
        self.in_place_inputs = frozenset(source.output_aliases.values())
        # per output: the input it is written into in place, else the shape and dtype of a fresh tensor
        self.output_plan = [(source.output_aliases.get(i), shape, torch_dtype(element))
                            for i, (shape, element) in enumerate(zip(source.output_shapes, source.output_elements))]
        self.in_ptrs = (ctypes.c_void_p * max(1, len(source.input_shapes)))()
        self.out_ptrs = (ctypes.c_void_p * max(1, len(source.output_shapes)))()
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
        arguments = self.arguments(inputs)
        if outputs is None:  # a cache written in place is its input's tensor
            outputs = [arguments[alias] if alias is not None else torch.empty(shape, dtype=dtype)
                       for alias, shape, dtype in self.output_plan]
        else:
            outputs = list(outputs)
            for output, argument in self.source.output_aliases.items():
                outputs[output] = arguments[argument]
        # ctypes drops the GIL during the call; one context's arena (and the pointer arrays) must not serve two
        # calls at once
        with self.lock:
            in_ptrs, out_ptrs = self.in_ptrs, self.out_ptrs
            in_ptrs[: len(arguments)] = [tensor.data_ptr() for tensor in arguments]
            out_ptrs[: len(outputs)] = [tensor.data_ptr() for tensor in outputs]
            status = (
                self.lib.llmc_forward(self.context, in_ptrs, out_ptrs)
                if seconds is None
                else self.lib.llmc_forward_profiled(self.context, in_ptrs, out_ptrs, seconds)
            )
        if status:
            self.fail(status)
        return tuple(outputs)

    def arguments(self, inputs) -> list[torch.Tensor]:
        """The inputs, checked against what the graph was compiled for; a non-contiguous one copied."""
        if len(inputs) != len(self.expected_inputs):
            raise LlmcError(f"the compiled graph takes {len(self.expected_inputs)} inputs, got {len(inputs)}")
        # a pass that only reads; not isinstance, whose Python-level __instancecheck__ (torch.Tensor's metaclass)
        # cost a GPT-2 decode step's call about 8 us after its kernels had swept the caches
        try:
            for tensor, (shape, dtype) in zip(inputs, self.expected_inputs):
                if tensor.shape != shape or tensor.dtype != dtype or not tensor.is_cpu or not tensor.is_contiguous():
                    break
            else:
                return inputs
        except AttributeError:  # not a tensor: said below
            pass
        arguments = list(inputs)
        for index, tensor in enumerate(inputs):
            if not isinstance(tensor, torch.Tensor):
                raise LlmcError(f"input {index} is {type(tensor).__name__}; the graph takes tensors")
            shape, dtype = self.expected_inputs[index]
            if tensor.shape != shape or tensor.dtype != dtype or not tensor.is_cpu:
                self.refuse(index, tensor)
            if not tensor.is_contiguous():
                if index in self.in_place_inputs:
                    raise LlmcError(f"input {index} is updated in place (a cache) and must be contiguous")
                arguments[index] = tensor.contiguous()
        return arguments

    def fail(self, status: int):
        if status == -1:
            raise LlmcError("the compiled graph's context is not initialised")
        kernel = self.source.status_kernels.get(status, "?")
        raise LlmcError(f"an index is out of range in kernel @{kernel} (a gather or embedding lookup, or a "
                        "cache write past its capacity, got an index outside its table, as eager would refuse "
                        "it; nothing was written out of bounds)")

    def refuse(self, index: int, tensor: torch.Tensor):
        shape, dtype = self.expected_inputs[index]
        if tensor.shape != shape:
            raise LlmcError(f"input {index} has shape {tuple(tensor.shape)}; the graph was compiled for {tuple(shape)}")
        raise LlmcError(f"input {index} is a {tensor.dtype} tensor on {tensor.device}; the graph was compiled for "
                        f"{dtype} CPU tensors")

    def __del__(self):
        context, lib = getattr(self, "context", None), getattr(self, "lib", None)
        if context and lib is not None:
            lib.llmc_destroy(context)
            self.context = None
