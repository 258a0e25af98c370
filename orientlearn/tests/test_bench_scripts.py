"""The simulation and distance-learning benchmark scripts must keep running:
``benchmarks/simulate.py --smoke`` and ``benchmarks/train.py --smoke`` (training and
saving a model, then evaluating that model with ``--model``), ``benchmarks/abinitio.py
--smoke`` (slow)."""
import math
import re

import pytest

from orientlearn.benchmarking import run_benchmark_script
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def run(script, *args, tmp_path):
    return run_benchmark_script(script, *args, cwd=tmp_path)


def table_rows(text):
    """{first cell: [other cells]} of the markdown table rows."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}


def check_footer(text, script):
    assert "[SMOKE RUN" in text
    assert re.search(r"- machine: .+, \d+ CPUs, TensorFlow \S+, GPU: ", text)
    assert re.search(r"git commit: \S+", text)
    assert re.search(r"- date: \d{4}-\d\d-\d\d", text)
    assert f"- command: python benchmarks/{script} --smoke" in text
    assert "CPU load average" in text


def test_simulate_benchmark_smoke(tmp_path):
    out = tmp_path / "simulate.md"
    text = run("simulate.py", "--out", str(out), tmp_path=tmp_path)
    assert out.read_text() == text
    check_footer(text, "simulate.py")
    rows = table_rows(text)
    labels = [k for k in rows if k.startswith(("projection only", "+ CTF"))]
    assert len(labels) == 3, rows.keys()
    for label in labels:
        n, seconds, rate = rows[label][:3]
        assert int(n) == 64 and float(seconds) > 0 and float(rate) > 0, rows[label]
    assert "target: 5,000 in < 30 s" in rows[labels[-1]][3]
    astra = rows["ASTRA projection (GPU, `project_astra`)"]
    assert "not measured (no CUDA GPU)" in astra or "max rel. L2 difference" in astra[3]


def check_train_table(text, model_row):
    check_footer(text, "train.py")
    rows = table_rows(text)
    assert rows["particles train / val / test"] == ["100 / 34 / 66"]
    assert re.match(model_row, rows["model"][0]), rows["model"]
    for label in ("training throughput, pairs/s (3 steps, B=32)",
                  "training throughput, images/s (3 steps, B=32)"):
        assert float(rows[label][0]) > 0, rows[label]
    maes = {}
    for label in ("MAE d_hat, validation, d_q made uniform (rad)",
                  "MAE d_hat, validation, random pairs (rad)",
                  "MAE d_hat, test, d_q made uniform (rad)",
                  "MAE d_hat, test, random pairs (rad)",
                  "L_DE validation particles, density-weighted MSE (rad²)"):
        maes[label] = float(rows[label][0].split()[0])
        assert 0.0 <= maes[label] <= math.pi ** 2, rows[label]
    for label, value in maes.items():
        if label.startswith("MAE"):
            assert value <= math.pi
    assert "target < 30 min" in rows["full training time"][0]
    # Per-bin table: 32 bins of 0.1 rad covering [0, pi]; MAE in [0, pi] where pairs.
    bins = [k for k in rows if re.match(r"\d\.\d–\d\.\d\d$", k)]
    assert len(bins) == 32 and bins[0] == "0.0–0.10" and bins[-1] == "3.1–3.14"
    assert sum(int(rows[b][0]) for b in bins) == 2000
    for b in bins:
        if int(rows[b][0]):
            assert 0.0 <= float(rows[b][1]) <= math.pi
    return rows, maes


def test_train_benchmark_smoke_trains_then_evaluates_the_saved_model(tmp_path):
    out = tmp_path / "train.md"
    models = tmp_path / "models"
    text = run("train.py", "--sigma2", "0", "--out", str(out), "--save-model", str(models),
               tmp_path=tmp_path)
    assert out.read_text() == text
    rows, maes = check_train_table(text, r"trained here, epochs: 2")
    assert float(rows["L_DE validation, best, training's augmented batches (rad²)"][0]) >= 0
    assert "measured" in rows["full training time"][0]
    plot = tmp_path / "train_density_sigma2_0_32px.png"        # --out's folder
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Evaluation only: the particles are regenerated, so the same model gives the same
    # numbers on the same validation and test pairs.
    model = models / "5j0n_sigma2_0_32px.keras"
    text2 = run("train.py", "--model", str(model), "--plot-dir", str(tmp_path / "plots"),
                tmp_path=tmp_path)
    rows2, maes2 = check_train_table(text2, r"loaded `.*5j0n_sigma2_0_32px\.keras`")
    assert rows2["L_DE validation, best, training's augmented batches (rad²)"] == [
        "— (not trained here)"]
    assert "estimated" in rows2["full training time"][0]
    for label, value in maes.items():
        assert abs(maes2[label] - value) < 2e-3, label
    assert (tmp_path / "plots" / "train_density_sigma2_0_32px.png").exists()


@pytest.mark.slow
def test_abinitio_benchmark_smoke(tmp_path):
    text = run_benchmark_script("abinitio.py", cwd=tmp_path, timeout=900)
    check_footer(text, "abinitio.py")
    rows = table_rows(text)
    for label in ("true orientations and offsets", "recover alone", "+ refinement",
                  "+ refinement + fine-tuning"):
        assert label in rows, rows.keys()
        assert all(math.isfinite(float(c)) for c in rows[label][:3]), rows[label]
    truth = rows["true orientations and offsets"]
    assert float(truth[0]) == 0.0
    # A one-epoch model orients at random: its map is worse than the truth's.
    assert float(truth[2]) < float(rows["recover alone"][2])
    assert "SAME-PROTEIN CEILING, not ab initio" in text
