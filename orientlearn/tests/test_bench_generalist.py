"""Smoke runs of benchmarks/generalist.py (training on dssp chains) and unseen.py."""
import json

import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

pytest.importorskip("MDAnalysisTests")


@pytest.mark.slow
def test_generalist_and_unseen_smoke(tmp_path):
    model = tmp_path / "g.keras"
    out = run_benchmark_script("generalist.py", "--out", model)
    assert "Trained on 3 proteins" in out
    meta = json.loads((tmp_path / "g.json").read_text())
    assert meta["kind"] == "generalist" and meta["image_size"] == 32
    assert not any(p.lower().startswith(("adk", "1osm", "1a28", "19hc", "4e43", "1hvr", "5j0n"))
                   for p in meta["training_proteins"])
    report = run_benchmark_script("unseen.py", "--model", model, "--out", tmp_path / "t.md")
    rows = [line for line in report.splitlines() if line.startswith("| adk_open")]
    assert len(rows) == 1 and "generalist, trained on 3 dssp chains" in rows[0]
    assert "- command: python benchmarks/unseen.py --smoke" in report


@pytest.mark.slow
def test_unseen_abinitio_smoke(tmp_path):
    pytest.importorskip("aspire")
    report = run_benchmark_script("unseen.py", "--abinitio", "--out", tmp_path / "a.md",
                                  timeout=600)
    rows = [line for line in report.splitlines() if line.startswith("| adk_open")]
    assert len(rows) == 1, report
    cells = [c.strip(" *") for c in rows[0].split("|")[1:-1]]
    pixel_size = float(cells[0].split(",")[1].split("A/px")[0])
    ours_fsc, truth_fsc = float(cells[5]), float(cells[6])
    # The scorer: the true orientations and offsets reach Nyquist (2 px) on clean particles,
    # and nothing estimated beats them.
    assert truth_fsc < 2.5 * pixel_size and ours_fsc >= truth_fsc, cells
    assert "no model, no map" in report
