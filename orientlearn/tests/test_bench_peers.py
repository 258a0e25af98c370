"""The peer benchmark must keep running: ``benchmarks/peers.py --smoke`` with ASPIRE and
two tiny distance models trained here (``--models 0=... 16=...``).

Skipped when no ASPIRE environment is found (``peer_aspire.find_aspire_python``;
``python -m orientlearn.core.peer_aspire create`` makes one). The numbers are checked
for sense only (tiny model, 40 images).
"""
import math
import os
import re

import pytest

from orientlearn.benchmarking import MAP_PATH, run_benchmark_script
from orientlearn.core import model_io, peer_aspire, simulation, training, volumes
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>
MAP = MAP_PATH


def aspire_python():
    return peer_aspire.find_aspire_python(os.environ.get(peer_aspire.ASPIRE_PYTHON_VAR))[0]


def tiny_model(folder):
    """A 32 px model (1 short epoch on 64 projections), saved twice as paper.py names
    its models: trained at sigma2 0 (head 'rotation') and 16 (head 'angle')."""
    vol, voxel = volumes.read_volume(MAP)
    vol32 = volumes.downsample_volume(vol, 32)
    sim = simulation.simulate_particles(vol32, 64, seed=1, voxel_size=voxel * vol.shape[0] / 32,
                                     return_clean=False)
    paths = {}
    for s2, head in ((0.0, "rotation"), (16.0, "angle")):
        model, _ = training.train_distance_model(
            sim["images"], sim["quaternions"], architecture="resnet", n_features=16,
            width=4, epochs=1, steps_per_epoch=2, batch_size=16, validation_fraction=0.25,
            seed=0, head=head)
        path = os.path.join(folder, f"5j0n_sigma2_{s2:g}_32px.keras")
        model_io.save_distance_model(model, path, dict(
            image_size=32, architecture="resnet", symmetry="C1", sigma2=s2, head=head,
            source="test_bench_peers"))
        paths[s2] = path
    return paths


def test_peers_benchmark_smoke(tmp_path):
    python = aspire_python()
    if python is None:
        pytest.skip("no ASPIRE environment (python -m orientlearn.core.peer_aspire create)")
    paths = tiny_model(str(tmp_path))
    out = tmp_path / "sub" / "peers.md"
    text = run_benchmark_script("peers.py", "--python", python, "--workdir", tmp_path / "work",
                         "--models", f"0={paths[0.0]}", f"16={paths[16.0]}", "--out", out,
                         cwd=tmp_path)
    assert out.read_text() == text

    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header[:3] == ["method", "model", "σ² (SNR)"] and len(header) == 10
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    by_level = {}
    for r in rows:
        by_level.setdefault(r[2], []).append(r)
        for cell in r[3:7]:                         # errors: "x.xxx (y.y°)" in [0, pi]
            assert 0.0 <= float(cell.split()[0]) <= math.pi + 1e-3, r
        assert float(r[7]) >= 0 and float(r[8]) >= 0 and float(r[9]) > 0, r
    assert list(by_level) == ["noiseless", "16 (1/16)"]
    for level, model in (("noiseless", "5j0n_sigma2_0_32px.keras (σ² 0, head rotation)"),
                         ("16 (1/16)", "5j0n_sigma2_16_32px.keras (σ² 16, head angle)")):
        methods = [r[0] for r in by_level[level]]
        assert methods == ["ASPIRE CLSyncVoting (n_theta 360), first 40 test images",
                           "orientlearn, first 40 test images",
                           "orientlearn, all 66 test images (error on the same 40)"], methods
        assert [r[1] for r in by_level[level]] == ["—", model, model]
    # Noiseless common lines on clean images are near exact (the convention is chosen there).
    assert float(by_level["noiseless"][0][5].split()[0]) < 0.05, by_level["noiseless"][0]

    assert "[SMOKE RUN]" in text
    assert "test split = the last 66 (split 100 / 34 / 66), first 40 used, " \
           "Fourier-downsampled to 32 px" in text
    assert f"σ² 0 → {paths[0.0]}" in text and f"σ² 16 → {paths[16.0]}" in text
    assert "chosen on the noiseless run" in text
    assert re.search(r"git commit: \S+", text)
    assert re.search(r"- date: \d{4}-\d\d-\d\d", text)
    assert "- machine:" in text
    assert "- command: python benchmarks/peers.py --smoke --python" in text
