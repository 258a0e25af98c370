"""The recovery scale benchmark must keep running: ``benchmarks/recover.py --smoke``.

The smoke run recovers 500 particles (exact neighbour search) and 4,000 (inverted file)
from exact distances plus 0.1 rad of noise; the table's numbers are checked for sense,
never for speed (tests never time things).
"""
import re

import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

COLUMNS = ["P", "search", "neighbour recall", "graph (s)", "init (s)", "optimisation (s)",
           "steps", "total (s)", "peak RSS (MB)", "start RSS (MB)",
           "median E_OR rot+hand (rad)", "median E_OR O(4) (rad)"]


def test_recover_benchmark_smoke_prints_the_table(tmp_path):
    out = tmp_path / "sub" / "recover.md"
    text = run_benchmark_script("recover.py", "--out", out)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == COLUMNS
    assert set(lines[1].replace("|", "")) == {"-"}
    rows = [dict(zip(COLUMNS, (c.strip() for c in line.split("|")[1:-1])))
            for line in lines[2:]]
    assert [r["P"] for r in rows] == ["500", "4,000"]
    assert [r["search"] for r in rows] == ["exact", "ivf"]     # both search paths ran
    for r in rows:
        assert all(r[c] for c in COLUMNS), r
        assert 0.95 <= float(r["neighbour recall"]) <= 1.0, r
        parts = [float(r[c]) for c in ("graph (s)", "init (s)", "optimisation (s)")]
        assert all(p >= 0 for p in parts)
        assert abs(sum(parts) - float(r["total (s)"])) <= 0.2, r
        assert 0 < int(r["steps"]) <= 1000
        assert float(r["peak RSS (MB)"]) >= float(r["start RSS (MB)"]) > 0
        # Small errors at 0.1 rad of distance noise, without ground-truth help (rotation
        # + handedness).
        rot, o4 = float(r["median E_OR rot+hand (rad)"]), float(r["median E_OR O(4) (rad)"])
        assert rot < 0.15, r
        # The O(4) fit (started from the rotation one) minimises a robust sum, not the
        # median: its median may exceed the rotation one by a hair, never by much.
        assert o4 <= 1.05 * rot + 1e-4, r
    assert "[SMOKE RUN]" in text
    assert re.search(r"git commit: \S+", text)
    assert "- machine:" in text and "- date:" in text
    assert "- command: python benchmarks/recover.py --smoke" in text
    assert out.read_text() == text


@pytest.mark.slow
def test_end_to_end_smoke_streams_from_a_stack_on_disk(tmp_path):
    """``--end-to-end``: simulate to a stack, embed, recover, reconstruct from it; the
    stages' times add up, the stack is removed, each stage's peak RSS is reported."""
    text = run_benchmark_script("recover.py", "--end-to-end", "300", "--sizes", "500",
                                "--workdir", tmp_path / "work", timeout=600)
    lines = [line for line in text.splitlines() if line.startswith("| 300 |")]
    assert len(lines) == 1, text
    cells = [c.strip() for c in lines[0].split("|")[1:-1]]
    stages = [float(c) for c in cells[2:6]]
    assert all(s >= 0 for s in stages) and abs(sum(stages) - float(cells[6])) <= 2
    rss = [float(v) for v in cells[7].split("/")]
    assert len(rss) == 4 and all(v > 0 for v in rss) and rss == sorted(rss)
    assert 0 <= float(cells[8]) <= 3.2                    # median error, radians
    assert "`reconstruct_halves` (one pass, exact CTF)" in text
    assert not any(p.suffix == ".mrcs" for p in (tmp_path / "work").iterdir())
