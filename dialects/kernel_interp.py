"""Interpreter functions for `kernel`: a kernel runs its region on its operands."""

from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    ReturnedValues,
    impl,
    impl_terminator,
    register_impls,
)

from llmc.dialects import kernel


@register_impls
class KernelFunctions(InterpreterFunctions):
    @impl(kernel.KernelOp)
    def run_kernel(self, interpreter: Interpreter, op: kernel.KernelOp, args: PythonValues):
        return interpreter.run_ssacfg_region(op.body, args, op.kernel_name.data)

    @impl_terminator(kernel.YieldOp)
    def run_yield(self, interpreter: Interpreter, op: kernel.YieldOp, args: PythonValues):
        return ReturnedValues(args), ()
