"""What the fuzzers found, each shrunk to a small program and kept after its fix."""

from __future__ import annotations

import numpy as np
from programs import Input, Program, Step
from test_fuzz_graphs import check_programs
from test_fuzz_passes import dump

from llmc.interpret import interpret
from llmc.ir_text import parse_ir
from llmc.pipeline import PassRunner
from llmc.registry import parse_passes


def test_a_tile_one_column_wide_reads_its_own_column():
    # lower-tile took every value of a one-column tile for a broadcast column and read column 0
    text, weights, args, expected = dump("gpt2_block")
    module = PassRunner(parse_passes("fuse,tile{matmul=1,1,1},lower-tile"), emit=lambda *_: None).run(parse_ir(text))
    for got, want in zip(interpret(module, args, weights), expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_transpose_of_a_concat_into_one_column():
    # the same bug on the C backend: the (24, 1) transpose of a concat came out as column 0 repeated
    check_programs([Program(
        inputs=(Input((1, 16)), Input((16,)), Input((1, 8))),
        steps=(Step("binary", (1, 0), ("add",)), Step("cat", (0, 2), (1,)), Step("unary", (0,), ("cos",)),
               Step("transpose", (4,), (1, 0))),
        outputs=(6,))])


def test_linear_of_a_vector_log_softmax_and_reciprocal():
    # a rank-1 input to a linear crashed the tile pass (IndexError in the cost model); log_softmax and
    # reciprocal (what 1 / x becomes once torch decomposes a graph) were not imported
    check_programs([
        Program(inputs=(Input((5,)),), steps=(Step("linear_bias", (0,), (7, 5)),), outputs=(1,)),
        Program(inputs=(Input((3, 17, 5)),), steps=(Step("log_softmax", (0,), (1, False, 5)),
                                                    Step("unary", (1,), ("recip1",))), outputs=(1, 2)),
        Program(inputs=(Input((2, 2, 4, 8)), Input((2, 2, 4, 8)), Input((2, 2, 4, 8))),
                steps=(Step("attention", (0, 1, 2), ("plain",)), Step("log_softmax", (3,), (-3, True, 8))),
                outputs=(4,)),
    ])


def test_row_tiles_narrower_than_the_row_are_refused():
    # lower-tile read past a row tile's columns (an interpreter IndexError) for tile{row=R,C} with C < the row
    import pytest

    from llmc.errors import PassOptionError

    text = dump("gpt2_block")[0]
    with pytest.raises(PassOptionError, match="row tiles span the whole row; this model's row kernels need 32"):
        PassRunner(parse_passes("fuse,tile{row=4,2},lower-tile"), emit=lambda *_: None).run(parse_ir(text))


def test_a_row_reduction_broadcast_along_columns_is_not_fused_into_its_rows():
    # tanh(x) * maximum(t, t).sum(1): the sum (one value per row) multiplies along the last dim (one per
    # column); fuse put the multiply in the row kernel, which read the row's own sum instead
    check_programs([Program(
        inputs=(Input((4, 4)),),
        steps=(Step("unary", (0,), ("tanh",)), Step("binary", (1, 1), ("maximum",)),
               Step("reduce", (2,), ("sum", 1, False)), Step("binary", (1, 3), ("mul",))),
        outputs=(4,))])
