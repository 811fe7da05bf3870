"""Fuzzing the pass pipeline: random valid pass orders and options (tile sizes, stages, swizzle group)
on the examples' graph-level dumps, each result interpreted and compared with the unoptimised graph
on random inputs. The interpreter is the oracle, so no C is built: many pipelines per CI run."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import graph_args, small_example
from fuzz_counts import COUNTS
from hypothesis import given, settings
from hypothesis import strategies as st

from llmc.errors import PassOptionError
from llmc.ir_text import parse_ir, print_ir
from llmc.pipeline import PassRunner
from llmc.registry import parse_passes
from test_fuzz_graphs import examples

from llmc.interpret import interpret

# small enough that the tile interpreter runs a pipeline in about a second
DUMPS = {
    "gpt2_block": dict(d_model=32, n_head=2, seq=8),
    "llama_block": dict(d_model=32, n_head=4, n_kv_head=2, hidden=48, seq=7),
    "gpt2_decode": dict(d_model=32, n_head=2, past=5),
    "llama_decode": dict(d_model=32, n_head=4, n_kv_head=2, hidden=48, past=6),
}
_CACHE: dict[str, tuple] = {}


def dump(name: str):
    """The example's graph-level IR as printed text, its weights, random arguments and its results."""
    if name not in _CACHE:
        from llmc.exporter import export_model

        model, inputs = small_example(name, **DUMPS[name])
        imported = export_model(model, inputs)
        args = [np.asarray(a.numpy() if hasattr(a, "numpy") else a) for a in graph_args(model, inputs, imported)]
        expected = interpret(imported.module, args, imported.weights)
        _CACHE[name] = (print_ir(imported.module), imported.weights, args, expected)
    return _CACHE[name]


POW2 = st.sampled_from((1, 2, 4, 8, 16, 32))


@st.composite
def pipelines(draw) -> str:
    """fuse, tile (random sizes per kernel kind and stages), lower-tile, then the tile-level passes in a
    random order and subset, plan-memory last or not at all."""
    tiles = []
    for kind, rank in (("matmul", 3), ("attention", 2), ("pointwise", 2)):
        if draw(st.booleans()):
            tiles.append(f"{kind}={','.join(str(draw(POW2)) for _ in range(rank))}")
    if draw(st.booleans()):  # row tiles span whole rows (narrower ones are refused: test_regressions.py)
        tiles.append(f"row={draw(POW2)},{draw(st.sampled_from((64, 128)))}")
    if draw(st.booleans()):
        tiles.append(f"stages={draw(st.integers(1, 4))}")
    tile = f"tile{{{' '.join(tiles)}}}" if tiles else "tile"
    later = draw(st.lists(st.sampled_from(("coalesce", "swizzle", "pipeline")), unique=True))
    options = {"swizzle": f"swizzle{{group={draw(st.sampled_from((1, 2, 4, 8)))}}}",
               "pipeline": f"pipeline{{stages={draw(st.integers(1, 4))}}}", "coalesce": "coalesce"}
    tail = [options[p] for p in draw(st.permutations(later))]
    if draw(st.booleans()):
        tail.append("plan-memory")
    return ",".join(["fuse", tile, "lower-tile", *tail])


@pytest.mark.parametrize("name", list(DUMPS))
def test_random_pipelines_keep_what_the_example_computes(name, request):
    text, weights, args, expected = dump(name)

    @settings(max_examples=examples(request, 8))
    @given(pipelines())
    def run(spec):
        try:
            module = PassRunner(parse_passes(spec), emit=lambda *_: None).run(parse_ir(text))
        except PassOptionError as refused:  # an option this model cannot take, said so (row tiles narrower than a row)
            assert "row tiles span the whole row" in str(refused)
            COUNTS["pass pipelines refused with a PassOptionError"] += 1
            return
        replayed = parse_ir(print_ir(module))  # what a dump replays
        for got, want in zip(interpret(replayed, args, weights), expected):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4, err_msg=f"-p '{spec}'")
        COUNTS["pass pipelines interpreted and compared"] += 1

    run()
