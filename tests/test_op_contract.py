"""The error contract, op by op: every ATen op the listed Hugging Face models use — as torch.export and as
aot_autograd write them — compiles and agrees with torch on the values the model gave it, or raises an
llmc error; never an internal exception. Ops llmc does not take are refused with an llmc error."""

from __future__ import annotations

import operator

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch.utils._pytree import tree_flatten, tree_leaves

import llmc
from llmc.api import compile_imported
from llmc.errors import LlmcError
from llmc.exporter import import_graph_module, inline_wrappers, trace_model

from e2e.hf_models import FAMILIES, hf_inputs, hf_model


def recorded_nodes(gm: torch.fx.GraphModule, args) -> dict:
    """Every call_function node's real inputs and output, running the graph on real values."""
    seen = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.op == "call_function":
                inputs = {n: self.env[n] for n in node.all_input_nodes}
                seen.setdefault(node.target, (node, inputs, result))
            return result

    with torch.no_grad():
        Recorder(gm).run(*args)
    return seen


def exported_ops(family: str, attention: str) -> dict:
    model, inputs = hf_model(family, attention), hf_inputs(2, 6)
    module = trace_model(model, inputs).module()
    inline_wrappers(module)
    flat = tree_flatten(((), inputs))[0]
    return recorded_nodes(module, flat)


def aot_ops(family: str, attention: str) -> dict:
    captured = {}

    def capture(gm, example_inputs):
        def inference(aot_gm, _):
            captured["gm"], captured["args"] = aot_gm, list(example_inputs)
            return aot_gm

        return aot_autograd(fw_compiler=inference, inference_compiler=inference)(gm, example_inputs)

    torch._dynamo.reset()
    model, inputs = hf_model(family, attention), hf_inputs(2, 6)
    with torch.no_grad():
        torch.compile(model, backend=capture, dynamic=False)(**inputs)
    torch._dynamo.reset()
    return recorded_nodes(captured["gm"], captured["args"])


def all_model_ops() -> dict:
    ops = {}
    for family in FAMILIES:
        for attention in ("sdpa", "eager"):
            for found in (exported_ops(family, attention), aot_ops(family, attention)):
                for target, record in found.items():
                    ops.setdefault(target, record)
    return ops


def single_op_graph(node: torch.fx.Node, inputs: dict, result) -> tuple[torch.fx.GraphModule, list, list]:
    """The op alone on placeholders holding its real inputs; returns (graph, inputs, expected outputs)."""
    graph = torch.fx.Graph()
    env, args = {}, []
    for source, value in inputs.items():
        env[source] = placeholder = graph.placeholder(source.name)
        placeholder.meta["val"] = value
        args.append(value)
    copy = graph.node_copy(node, lambda n: env[n])
    copy.meta["val"] = result
    expected = [result]
    if isinstance(result, tuple | list):
        outputs, expected = [], []
        read = {user.args[1] for user in node.users if user.target is operator.getitem}  # what the model reads
        for index, item in enumerate(result):
            if isinstance(item, torch.Tensor) and index in read:
                picked = graph.call_function(operator.getitem, (copy, index))
                picked.meta["val"] = item
                outputs.append(picked)
                expected.append(item)
        graph.output(tuple(outputs))
    else:
        graph.output(copy)
    return torch.fx.GraphModule(torch.nn.Module(), graph), args, expected


def check_op(node: torch.fx.Node, inputs: dict, result) -> str:
    """'compiled', 'refused: <llmc error>', or raises on a wrong value or an internal exception."""
    gm, args, expected = single_op_graph(node, inputs, result)
    try:
        imported = import_graph_module(gm, {}, {})
        compiled = compile_imported(imported, backend="interpret", emit=lambda *_: None)
        got = compiled.run_graph(args)
    except LlmcError as error:
        return f"refused: {error}"
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    return "compiled"


def test_every_model_op_compiles_correctly_or_is_refused():
    ops = {t: r for t, r in all_model_ops().items()
           if isinstance(t, torch._ops.OpOverload) and any(isinstance(v, torch.Tensor) for v in tree_leaves(r[2]))}
    assert len(ops) >= 40, sorted(map(str, ops))
    outcomes, failures = {}, {}
    for target, (node, inputs, result) in ops.items():
        try:
            outcomes[str(target)] = check_op(node, inputs, result)
        except Exception as error:  # a wrong value or an exception that is not an llmc error
            failures[str(target)] = f"{type(error).__name__}: {error}"
    assert not failures, failures
    refused = {t: o for t, o in outcomes.items() if o != "compiled"}
    # what the models need to run whole must compile; only ops that are always constant may be refused
    assert set(refused) <= COMPILE_TIME_ONLY, refused
    return outcomes


class Sort(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


class TopK(torch.nn.Module):
    def forward(self, x):
        return torch.topk(x, 2).values


class NonZero(torch.nn.Module):
    def forward(self, x):
        return torch.nonzero(x > 0)


class BoolIndex(torch.nn.Module):
    def forward(self, x):
        return x[x > 0]


class Fft(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()


class Double(torch.nn.Module):
    def forward(self, x):
        return (x.double() @ x.double().T).float()


class TrainDropout(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.dropout(x, 0.5, training=True)


class Bernoulli(torch.nn.Module):
    def forward(self, x):
        return torch.bernoulli(torch.sigmoid(x))


class ScatterAdd(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(4, 3).scatter_add(0, torch.tensor([[0, 1, 2], [3, 0, 1]]), x[:2])


# evaluated at compile time in a model; on a run-time tensor llmc refuses them with an llmc error
COMPILE_TIME_ONLY = {"aten.triu.default", "aten.tril.default"}
UNSUPPORTED = [Sort, TopK, NonZero, BoolIndex, Fft, Double, TrainDropout, Bernoulli, ScatterAdd]


@pytest.mark.parametrize("model", UNSUPPORTED, ids=lambda m: m.__name__)
def test_ops_llmc_does_not_take_are_llmc_errors(model):
    with pytest.raises(LlmcError):
        llmc.compile(model(), (torch.randn(3, 3),), backend="interpret", emit=lambda *_: None)
