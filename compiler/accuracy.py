"""What quantization costs in accuracy: `llmc compile --quantize ... --run`.

Two comparisons. Against the dequantized reference (the float model whose
quantized linears hold exactly the values their codes stand for), the compiled
model must agree to float32 rounding: that checks the compiler. Against the
float model, the figures say what the format costs: max and mean absolute
error of the outputs, and, for a model whose output ends in logits over a
vocabulary, top-1 agreement on the example inputs and on random token
sequences shaped like them.
"""

from __future__ import annotations

import copy

import torch
from torch.utils._pytree import tree_leaves, tree_map

from llmc.exporter import split_inputs
from llmc.dialects import graph
from llmc.quantization import QuantFormat, dequantize, parse_derived, quantize, round_activations


def dequantized_model(model: torch.nn.Module, quantized_module) -> torch.nn.Module:
    """A copy of `model` whose weights the quantized IR reads as codes are replaced by what the codes stand for,
    the products the IR marks `activations = "int8"` reading their input rounded as it says."""
    reference = copy.deepcopy(model)
    rounded = {_codes_name(op.weight) for op in quantized_module.walk()
               if isinstance(op, graph.LinearOp) and op.activations is not None}
    with torch.no_grad():
        for op in quantized_module.walk():
            derived = parse_derived(op.weight_name.data) if isinstance(op, graph.WeightOp) else None
            if derived is None or derived.part != "codes":
                continue
            weight = reference.get_parameter(derived.base)
            values = weight.detach().float().numpy()
            values = values.T if derived.transposed else values
            codes, scales, zeros = quantize(values, derived.format)
            dequantized = dequantize(codes, scales, zeros, derived.format, values.shape[1])
            readers = _replace_in_products(reference, weight,
                                           torch.from_numpy(dequantized.T if derived.transposed else dequantized))
            if op.weight_name.data in rounded:
                for module in readers:
                    module.register_forward_pre_hook(_round_input)
    return reference


def _codes_name(weight) -> str | None:
    """The codes weight behind a linear's dequantized weight."""
    dequantize = weight.owner
    if not isinstance(dequantize, graph.DequantizeOp) or not isinstance(dequantize.codes.owner, graph.WeightOp):
        return None
    return dequantize.codes.owner.weight_name.data


def _round_input(module, args):
    x = args[0]
    rounded = torch.from_numpy(round_activations(x.detach().float().numpy())).to(x.dtype)
    return (rounded, *args[1:])


def _replace_in_products(model: torch.nn.Module, weight: torch.nn.Parameter, values: torch.Tensor) -> list:
    """`values` wherever a product reads `weight`; an embedding tied to it (GPT-2's lm_head and wte) keeps
    the float rows, as the quantized graph gathers them from the float weight. Returns the modules whose
    products read the new values."""
    owners = [(module, name) for module in model.modules() for name, p in module.named_parameters(recurse=False)
              if p is weight]
    products = [(module, name) for module, name in owners if not isinstance(module, torch.nn.Embedding)]
    if not products or len(products) == len(owners):  # untied (or read only through the embedding module)
        weight.copy_(values)
        return [module for module, _ in products]
    for module, name in products:
        setattr(module, name, torch.nn.Parameter(values.to(weight.dtype), requires_grad=False))
    return [module for module, _ in products]


def _outputs(model, inputs) -> list[torch.Tensor]:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        return [t.float() for t in tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor)]


def _random_tokens(inputs, vocab: int, seed: int):
    generator = torch.Generator().manual_seed(seed)

    def fresh(x):
        if isinstance(x, torch.Tensor) and x.dtype == torch.long and x.dim() == 2 and int(x.max()) > 1:
            return torch.randint(0, vocab, x.shape, generator=generator)
        return x

    return tree_map(fresh, inputs)


def quantization_report(compiled, model: torch.nn.Module, inputs, fmt: QuantFormat, sequences: int = 8) -> tuple[str, bool]:
    """The report's lines, and whether the compiled model matched its dequantized reference."""
    reference = dequantized_model(model, compiled.runner.snapshots["quantize"])
    got, exact = _outputs(compiled, inputs), _outputs(reference, inputs)
    worst = max(float((g - e).abs().max()) for g, e in zip(got, exact))
    scale = max(1.0, max(float(e.abs().max()) for e in exact))
    ok = worst <= 1e-4 * scale
    lines = [f"quantized ({fmt.describe()}) vs its dequantized reference: max abs error {worst:.3g} "
             f"({'OK' if ok else 'MISMATCH'})"]
    floats = _outputs(model, inputs)
    errors = [(g - f).abs() for g, f in zip(got, floats)]
    lines.append(f"quantized vs the float model: max abs error {max(float(e.max()) for e in errors):.3g}, "
                 f"mean abs error {sum(float(e.mean()) for e in errors) / len(errors):.3g}")
    logits = floats[0]
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or logits.shape[-1]
    if logits.dim() >= 2 and logits.shape[-1] > 1:
        agree = [(got[0].argmax(-1) == logits.argmax(-1)).float()]
        tokens = any(isinstance(x, torch.Tensor) and x.dtype == torch.long for x in tree_leaves(inputs))
        for seed in range(sequences if tokens else 0):
            batch = _random_tokens(inputs, vocab, seed)
            agree.append((_outputs(compiled, batch)[0].argmax(-1) == _outputs(model, batch)[0].argmax(-1)).float())
        share = float(torch.cat([a.reshape(-1) for a in agree]).mean())
        over = f"the example inputs and {len(agree) - 1} random token sequences" if len(agree) > 1 else "the example inputs"
        lines.append(f"top-1 agreement with the float model over {over}: {share:.1%} "
                     f"({sum(a.numel() for a in agree)} positions)")
    return "\n".join(lines), ok
