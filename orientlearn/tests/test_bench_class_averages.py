"""``benchmarks/class_averages.py --smoke`` must keep running and print its table (slow:
two ASPIRE runs), and on its tiny noiseless 5j0n set the compact classes (the default)
must be oriented better than the first ones (measured 0.27 against 1.71 rad)."""
import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.test_common_lines_map import needs_aspire
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


@needs_aspire
@pytest.mark.slow
def test_class_averages_benchmark_smoke(tmp_path):
    out = tmp_path / "class_averages.md"
    text = run_benchmark_script("class_averages.py", "--out", str(out), cwd=tmp_path,
                                timeout=600)
    assert out.read_text() == text
    assert "[SMOKE RUN" in text and "git commit:" in text
    assert "- command: python benchmarks/class_averages.py --smoke" in text
    rows = {cells[2]: cells for cells in
            ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
             if line.startswith("| 5j0n"))}
    assert sorted(rows) == ["compact", "first"]
    compact, first = float(rows["compact"][3]), float(rows["first"][3])
    assert compact < 0.6 and compact < first, (compact, first)
