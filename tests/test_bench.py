"""`llmc bench` puts eager and llmc side by side with ratios and roofline figures."""

from conftest import small_example

from llmc.bench import bench


def test_bench_reports_medians_ratios_and_peak_fractions():
    model, inputs = small_example("gpt2_block")
    result = bench(model, inputs, "gpt2_block (small)", repeats=3, inductor=False, log=lambda _: None)
    assert [c.name for c in result.contenders] == ["eager", "llmc"]
    assert result.peak_gflops > 0 and result.peak_gbs > 0 and result.flops > 0
    assert result.max_abs_error < 1e-4 and result.llmc_warm_s is not None
    text = result.format()
    assert "x eager" in text and "%peak" in text and "llmc warm (cached) compile" in text
