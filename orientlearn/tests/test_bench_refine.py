"""The refinement benchmark must keep running: ``benchmarks/refine.py --smoke``."""
import re

import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def _first_number(cell):
    return float(re.search(r"[-\d.]+", cell).group())


@pytest.mark.slow
def test_refine_benchmark_smoke_improves_a_noiseless_start(tmp_path):
    out = tmp_path / "refine.md"
    text = run_benchmark_script("refine.py", "--sigma2", "0", "--out", out)
    assert out.read_text() == text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in text.splitlines() if line.startswith("| ")}
    start = _first_number(rows["start: E_OR median / mean, rotation+handedness (rad)"])
    refined = _first_number(rows["**refined: E_OR median** / mean (rad)"])
    assert refined < 0.5 * start, (start, refined)
    assert _first_number(rows["**refined: offsets, median error (px)**"]) < 0.3
    assert "- command: python benchmarks/refine.py" in text
