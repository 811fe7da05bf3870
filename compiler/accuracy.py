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
from llmc.quantization import QuantFormat, dequantize, parse_derived, quantize


def dequantized_model(model: torch.nn.Module, quantized_module) -> torch.nn.Module:
    """A copy of `model` whose weights the quantized IR reads as codes are replaced by what the codes stand for."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for op in quantized_module.walk():
            derived = parse_derived(op.weight_name.data) if isinstance(op, graph.WeightOp) else None
            if derived is None or derived[2] != "codes":
                continue
            name, fmt, _ = derived
            weight = reference.get_parameter(name)
            codes, scales, zeros = quantize(weight.detach().float().numpy(), fmt)
            weight.copy_(torch.from_numpy(dequantize(codes, scales, zeros, fmt, weight.shape[1])))
    return reference


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
