"""The roofline: measured ceilings, a point per kernel, roofline.svg, the report as JSON, progress."""

from __future__ import annotations

import json


import llmc
from llmc.cli import main
from llmc.roofline import Ceilings, roofline, write_svg

MODEL = """import torch
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 96)
    def forward(self, x):
        return torch.softmax(self.fc(x), dim=-1)
model = M()
example_inputs = (torch.randn(32, 64),)
"""


def block():
    """The model MODEL's file defines, and its example inputs: one definition for the API and the CLI."""
    namespace: dict = {}
    exec(MODEL, namespace)
    return namespace["model"], namespace["example_inputs"]


def test_points_sit_on_the_ceilings_they_are_bound_by():
    compiled = llmc.compile(*block(), emit=lambda *_: None)
    ceilings = Ceilings(gflops=100.0, dram_gbs=10.0, llc_gbs=40.0, l2_gbs=80.0, source="test")
    model = roofline(compiled.kernels_ir(), ceilings, {"k0_linear": 50.0})
    (product, *rest) = model.kernels
    assert product.name == "k0_linear" and product.flops == 2 * 32 * 64 * 96
    assert abs(product.predicted_gflops - min(100.0, product.intensity * 10.0)) < 1e-9
    assert abs(product.percent_of_roofline - 100 * product.predicted_us / 50.0) < 1e-9
    assert all(k.measured_us is None and k.percent_of_roofline is None for k in rest)


def test_svg_names_every_kernel_and_the_ceilings(tmp_path):
    compiled = llmc.compile(*block(), emit=lambda *_: None)
    ceilings = Ceilings(100.0, 10.0, 40.0, 80.0, "probe, measured today")
    model = roofline(compiled.kernels_ir(), ceilings, {k.name: 3.0 for k in roofline(compiled.kernels_ir(), ceilings).kernels})
    write_svg(tmp_path / "r.svg", model, "a title")
    svg = (tmp_path / "r.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    for k in model.kernels:
        assert k.name in svg
    assert "LLC 40 GB/s" in svg and "probe, measured today" in svg


def test_compile_run_writes_roofline_json_and_a_percent_column(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(MODEL)
    assert main(["compile", "m.py", "--run", "--out-dir", "out", "--json", "report.json"]) == 0
    out = capsys.readouterr()
    assert "% roof" in out.out and "ceilings: probe, measured" in out.out
    assert (tmp_path / "out" / "roofline.svg").exists()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["matches_eager"] is True and data["ceilings"]["gflops"] > 0 and data["ceilings"]["l2_gbs"] > 0
    kernels = {k["name"]: k for k in data["kernels"]}
    assert all(k["measured_us"] > 0 and k["percent_of_roofline"] > 0 for k in kernels.values())
    assert data["decisions"]["k0_linear"]["tiles"] and {p["name"] for p in data["passes"]} >= {"fuse", "tile"}
    assert "\r" not in out.err  # no progress bar where standard error is not a terminal


def test_compile_without_run_writes_json_on_nominal_ceilings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(MODEL)
    assert main(["compile", "m.py", "--json", "r.json"]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ceilings"]["source"].startswith("nominal") and data["matches_eager"] is None
    assert not (tmp_path / "llmc-out" / "m" / "roofline.svg").exists()


def test_the_probe_records_when_and_what_it_measured(tmp_path):
    from llmc.backends.c.build import BuildOptions
    from llmc.backends.c.probe import ISA_FEATURES, machine_peak
    from llmc.target import host_cpu_flags

    peak = machine_peak(BuildOptions.from_environment(), 8)
    assert peak.measured_at.endswith("UTC") and peak.l2_gbs > 0 and peak.llc_gbs > 0
    assert set(peak.features) == set(host_cpu_flags() & ISA_FEATURES)
