"""The paper benchmark script must keep running: ``benchmarks/paper.py --smoke`` end to end.

(``benchmarks/peers.py`` has its own smoke test, ``test_bench_peers.py``, which runs
where an ASPIRE environment exists.)
"""
import re

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

EXPECTED_ROWS = [
    "E_OR median, O(4) aligned (rad)",
    "E_OR mean, O(4) aligned (rad)",
    "E_OR median, rotation+handedness (rad)",
    "E_OR mean, rotation+handedness (rad)",
    "L_DE validation, best (rad²)",
    "L_OR final (rad²)",
    "FSC0.5 vs true map (Å)",
    "FSC0.143 vs true map (Å)",
    "time train (s)",
    "time reconstruct + FSC (s)",
    "peak RSS after training / recovery / all (MB)",
]


def test_paper_benchmark_smoke_prints_the_table(tmp_path):
    out = tmp_path / "bench.md"
    text = run_benchmark_script("paper.py", "--sigma2", "0", "4", "--out", out)
    assert "| metric | noiseless: ours | σ²=4: ours |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ")}
    for label in EXPECTED_ROWS:
        assert label in rows, f"missing row {label!r}"
        cells = [c.strip() for c in rows[label].split("|")[2:-1]]
        assert len(cells) == 2 and all(cells), rows[label]
    # Errors are finite numbers in [0, pi] rad.
    for label in EXPECTED_ROWS[:4]:
        for cell in rows[label].split("|")[2:-1]:
            value = float(cell.split()[0])
            assert 0.0 <= value <= 3.1416, rows[label]
    assert re.search(r"git commit: \S+", text)
    assert "machine:" in text
    assert out.read_text() == text


def _paper_module():
    import importlib.util

    from orientlearn.benchmarking import REPO
    spec = importlib.util.spec_from_file_location("paper_bench", f"{REPO}/benchmarks/paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ctf_estimates_carry_a_defocus_error_and_leave_the_truth_alone():
    import numpy as np

    paper = _paper_module()
    n = 4000
    du = np.full(n, 15000.0)
    truth = dict(defocus_u=du, defocus_v=du - 300.0, astig_angle=np.zeros(n), voltage=300.0)
    idx = np.arange(0, n, 2)
    est = paper.estimated_ctf(truth, idx, 100.0, seed=0)
    error = est["defocus_u"] - 15000.0
    assert abs(np.std(error) - 100.0) < 8.0              # N(0, 100 A), 2000 draws
    np.testing.assert_allclose(est["defocus_u"] - est["defocus_v"], 300.0)   # astigmatism kept
    assert est["voltage"] == 300.0 and len(est["astig_angle"]) == len(idx)
    assert np.all(truth["defocus_u"] == 15000.0)          # the simulation's values untouched
    assert len(paper.estimated_ctf(truth, slice(10, 30), 100.0, seed=0)["defocus_v"]) == 20
    exact = paper.estimated_ctf(truth, idx, 0.0, seed=0)
    assert np.all(exact["defocus_u"] == 15000.0)
