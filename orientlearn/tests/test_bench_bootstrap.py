"""``benchmarks/bootstrap.py --smoke`` must keep running and print its table (slow: it
trains two tiny models)."""
import math

import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


@pytest.mark.slow
def test_bootstrap_benchmark_smoke(tmp_path):
    out = tmp_path / "bootstrap.md"
    text = run_benchmark_script("bootstrap.py", "--out", str(out), cwd=tmp_path,
                                timeout=600)
    assert out.read_text() == text
    assert "[SMOKE RUN" in text and "git commit:" in text
    assert "- command: python benchmarks/bootstrap.py --smoke" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].strip().split()[0] for r in rows] == ["true", "25"]
    for r in rows:
        # Median errors (recovered, refined) are angles in [0, pi].
        for cell in (r[5], r[6].strip(" *")):
            assert 0 <= float(cell) <= math.pi
    # The true map's correlation with itself.
    assert abs(float(rows[0][1]) - 1) < 1e-6 and float(rows[1][1]) < 1
