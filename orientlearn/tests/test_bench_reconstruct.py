"""The reconstruction benchmark must keep running: ``benchmarks/reconstruct.py --smoke``."""
import re

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

EXPECTED_ROWS = [
    "images in memory (MB)",
    "time simulate (s)",
    "time reconstruct, true orientations (s)",
    "reconstruct rate (particles/s)",
    "peak RSS after simulate (MB)",
    "peak RSS after reconstruct (MB)",
    "FSC0.5 vs true map, true orientations (Å)",
    "FSC0.143 vs true map, true orientations (Å)",
    "FSC0.5 vs true map, 5° perturbed (Å)",
    "FSC0.143 vs true map, 5° perturbed (Å)",
    "FSC0.5 vs true map, 10° perturbed (Å)",
    "FSC0.143 vs true map, 10° perturbed (Å)",
    "FSC0.5 vs true map, 15° perturbed (Å)",
    "FSC0.143 vs true map, 15° perturbed (Å)",
    "FSC0.5 half maps, true orientations (Å)",
    "FSC0.143 half maps, true orientations (Å)",
]


def first_number(cell):
    return float(cell.split()[0])


def test_reconstruct_benchmark_smoke_prints_the_table(tmp_path):
    out = tmp_path / "sub" / "bench.md"
    text = run_benchmark_script("reconstruct.py", "--out", out)
    assert "| metric | 200 particles |" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}
    for label in EXPECTED_ROWS:
        assert label in rows, f"missing row {label!r}"
        assert len(rows[label]) == 1 and rows[label][0], (label, rows[label])
        value = first_number(rows[label][0])
        assert value >= 0 and value == value, (label, rows[label])
    # Resolutions are at least the Nyquist limit (2 x 8.708 A at 32 px)...
    for label in EXPECTED_ROWS[6:]:
        assert first_number(rows[label][0]) >= 17.4 - 0.05, (label, rows[label])
    # ... and wrong orientations make the map worse.
    true05 = first_number(rows["FSC0.5 vs true map, true orientations (Å)"][0])
    bad05 = first_number(rows["FSC0.5 vs true map, 15° perturbed (Å)"][0])
    assert true05 < bad05
    assert re.search(r"git commit: \S+", text)
    assert "machine:" in text and "date:" in text
    assert "command: python benchmarks/reconstruct.py --smoke --out" in text
    assert out.read_text() == text
