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
    # the ceilings timed in rotation with the kernels: one copy beyond the LLC and one FMA pass a round
    kernels_ms, copy_gbs, fma_gflops = result.alongside
    assert kernels_ms > 0 and copy_gbs > 0.1 and fma_gflops > 0.1
    assert "in rotation with the probes" in text and result.as_dict()["alongside_probes"]["copy_gbs"] == copy_gbs
    compute, bandwidth = result.shares_alongside()
    assert compute == result.flops / (kernels_ms * 1e6) / fma_gflops


def test_a_profile_runs_the_probes_between_the_kernels_calls():
    import llmc

    model, inputs = small_example("gpt2_block")
    compiled = llmc.compile(model, inputs, emit=lambda _: None)
    calls = []
    measured = compiled.profile(inputs, 4, between=lambda: calls.append(len(calls)))
    assert calls == [0, 1, 2, 3] and all(us > 0 for us in measured.values())


def test_the_gpu_benchmark_script_runs_its_cases_in_smoke_mode():
    """benchmarks/gpu.py on tiny shapes under Triton's interpreter: the script a GPU run uses, end to end."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--dtypes", "bf16", "--only", "GEMM", "attention",
                           "gpt2 decode"],
                          capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "llmc-explicit" in done.stdout and "smoke run" in done.stdout
    errors = [float(e) for e in re.findall(r"max abs error vs eager on the CPU (\S+)", done.stdout)]
    # a decode step's integer position stays an index when the case casts its inputs to bf16
    assert "gpt2 decode step" in done.stdout
    assert len(errors) == 6 and max(errors) < 0.5  # a few bf16 ulps of outputs of magnitude ~10


def test_a_probe_re_measured_under_load_never_lowers_a_ceiling(monkeypatch):
    """A kernel beat the cached peak, so bench re-runs the probe; on a loaded host the new reading can be
    lower still, and each ceiling keeps the larger of the two."""
    import llmc.backends.c.probe as probe
    from llmc.backends.c.probe import MachinePeak
    from llmc.bench import plausible_peak
    from llmc.target import host_cpu_target

    cached = MachinePeak(100.0, 10.0, 2, "then", l2_gbs=50.0, llc_gbs=30.0)
    loaded = MachinePeak(120.0, 6.0, 2, "now", l2_gbs=40.0, llc_gbs=35.0)
    monkeypatch.setattr(probe, "machine_peak", lambda *args, **kwargs: loaded)
    target = host_cpu_target()
    moved = 4 * target.llc_bytes  # beyond the LLC at 16 GB/s: more than the cached 10 GB/s
    peak, note = plausible_peak(cached, 1_000_000, moved, moved / 16e9 * 1e3, target.llc_bytes, None, target,
                                lambda _: None)
    assert (peak.gflops, peak.bandwidth_gbs, peak.l2_gbs, peak.llc_gbs) == (120.0, 10.0, 50.0, 35.0)
    assert peak.measured_at == "now" and "re-measured now" in note
