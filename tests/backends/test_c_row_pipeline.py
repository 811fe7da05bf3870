"""Row kernels rendered one row at a time, the next row's first pass computed in the current row's compute pass
(backends/c/row_pipeline.py), against eager and in the C they generate."""

import re
from dataclasses import replace

import pytest
import torch

import llmc
from llmc.cost_model import row_tiles
from llmc.target import get_target

PIPELINED = "each row's first pass is computed in the previous row's next pass"


def passes(rows: int, cols: int) -> str:
    tile = 1 << (cols - 1).bit_length()
    return (f"fuse,tile{{target=cpu row={rows},{tile}}},lower-tile,coalesce{{target=cpu}},swizzle{{target=cpu}},"
            "pipeline{mode=expand},plan-memory")


def compile_rows(model, x, rows):
    return llmc.compile(model, (x,), target="c", emit=lambda _: None, autotune=False, passes=passes(rows, x.shape[-1]))


def kernel_text(source: str, name: str) -> str:
    kernel = source[source.index(f"static void kernel_{name}"):]
    return kernel[: kernel.index("\n}\n")]


class RowOps(torch.nn.Module):
    """Row kernels of every form: the first pass feeding a row statistic (LayerNorm, RMSNorm), a reduction
    carrying the next row's first pass (max minus sum), softmax's exp pass carrying it."""

    def __init__(self, cols):
        super().__init__()
        self.norm = torch.nn.LayerNorm(cols)
        self.weight = torch.nn.Parameter(torch.randn(cols))
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()

    def forward(self, x):
        rms = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * self.weight
        spread = x.amax(-1, keepdim=True) - x.sum(-1, keepdim=True)
        return torch.softmax(x, -1), self.norm(x), rms, torch.log_softmax(x, -1), spread


@pytest.mark.parametrize("rows, cols, per_program", [(13, 37, 4), (13, 37, 8), (40, 100, 16), (6, 768, 4),
                                                     (130, 96, 8), (9, 1024, 2)])
def test_rows_one_at_a_time_match_eager(rows, cols, per_program):
    """Rows are offset 100 apart (row r by 100 (r % 4)), so a first pass that read the wrong row (a max, a mean)
    would overflow a softmax's exponentials or underflow their sum, or shift a norm; programs end past the last
    row (13 rows in 4s) and rows end inside a vector (37, 100 columns)."""
    torch.manual_seed(rows * cols)
    model = RowOps(cols).eval()
    x = torch.randn(2, rows, cols) + 100.0 * (torch.arange(rows) % 4).reshape(1, rows, 1)
    compiled = compile_rows(model, x, per_program)
    assert PIPELINED in compiled.program.source.text
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-4)


def test_the_next_rows_max_is_computed_in_the_exp_pass():
    """softmax in programs of 8 rows: the max runs alone for row 0; the exp pass of row r also takes the max of
    row r + 1 (its loads one row down, inside the view) and keeps it only for the program's rows; the
    exponentials of every row reuse the first row of their slot."""

    class Softmax(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, -1)

    x = torch.randn(1, 64, 256)
    compiled = compile_rows(Softmax(), x, 8)
    kernel = kernel_text(compiled.program.source.text, "k0_softmax")
    body = kernel[kernel.index(PIPELINED):]
    assert body.count("for (long r = 0; r < 8; r++)") == 1  # one loop over the rows around every pass
    prologue = body[body.index("if (r == 0)"):body.index("graph.exp")]
    assert "vmax(" in prologue and "vhmax(" in prologue
    exp_pass = body[body.index("graph.exp"):body.index("tile.store")]
    # kept inside the view, so that the load tests no row in the loop (past the last row it re-reads the last)
    assert re.search(r"llmc_load_vec\(arg0 \+ v\d+, llmc_row_within\(v\d+ \+ \(r \+ 1\), 64\), ", exp_pass)
    assert re.search(r"if \(r \+ 1 < 8\) \{\s+v\d+\.p\[\(r \+ 1\) \* v\d+\.ld\] = vhmax\(", exp_pass)
    assert re.search(r"vstore\(v\d+\.p \+ 0 \* v\d+\.ld \+ c, ", exp_pass)
    assert "LLMC_WHOLE_VECTORS(c, 256);" in exp_pass  # 256 columns: every vector whole, no edge tests
    torch.testing.assert_close(compiled(x), torch.softmax(x, -1))


def test_a_scan_keeps_the_rows_pass_by_pass():
    """A cumsum's scan runs over all of the program's rows at once: the kernel keeps a loop over the rows per
    pass, and the cost model gives it the rows that fit L1 with their copy."""

    class Cumsum(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, -1) * x.sum(-1, keepdim=True)

    x = torch.randn(1, 24, 40)
    compiled = compile_rows(Cumsum(), x, 4)
    source = compiled.program.source.text
    kernels = [k for k in source.split("static void kernel_")[1:] if "tile.scan" in k]
    assert len(kernels) == 1
    scan = kernels[0][: kernels[0].index("\n}\n")]
    assert "the rows one at a time" not in scan
    assert scan.count("for (long r = 0; r < 4; r++)") >= 2
    torch.testing.assert_close(compiled(x), torch.cumsum(x, -1) * x.sum(-1, keepdim=True), atol=1e-4, rtol=1e-4)


def test_rows_one_at_a_time_take_eight_rows_while_every_core_has_four_programs():
    cpu = replace(get_target("cpu-avx2"), cores=2)
    assert row_tiles((16384, 1024), cpu, row_by_row=True).tiles == (8, 1024)
    assert row_tiles((128, 768), cpu, row_by_row=True).tiles == (8, 1024)  # 16 programs
    assert row_tiles((128, 768), replace(cpu, cores=16), row_by_row=True).tiles == (2, 1024)
    assert row_tiles((3, 64), cpu, row_by_row=True).tiles == (1, 64)
    assert row_tiles((16384, 1024), replace(cpu, l1_bytes=32 * 1024)).tiles == (2, 1024)  # pass by pass
