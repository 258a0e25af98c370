"""The ``orientlearn`` command line on STAR/MRC files: simulate -> train (tiny) ->
recover -> reconstruct -> compare, run as a user would (``python -m``, a fresh process
per command), with no Scipion configured (core only)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from orientlearn.core import geometry
from orientlearn.core.source import read_star, write_star
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)   # scipion3 tests orientlearn.tests.test_cli

MAP = os.path.join(os.path.dirname(__file__), os.pardir, "data", "5j0n.mrc")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def orientlearn(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "orientlearn.core.commands", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_help_of_every_command(tmp_path):
    code, out = orientlearn("--help", cwd=tmp_path)
    assert code == 0
    for name in ("simulate", "train", "embed", "recover", "reconstruct", "compare"):
        assert name in out
        code, text = orientlearn(name, "--help", cwd=tmp_path)
        assert code == 0 and "usage: orientlearn " + name in text, text


@pytest.mark.slow
def test_simulate_train_recover_reconstruct(tmp_path):
    def run(*args):
        code, out = orientlearn(*args, cwd=tmp_path)
        assert code == 0, out
        return out

    out = run("simulate", MAP, "-o", "sim/particles.star", "-n", 300, "--size", 32,
              "--sigma2", 0, "--max-shift", 1.5, "--ctf", "--chunk-size", 128, "--seed", 1)
    assert "simulate: 300/300" in out                       # progress on the terminal
    truth = read_star(tmp_path / "sim" / "particles.star")
    assert (len(truth), truth.image_size) == (300, 32)
    assert truth.ctf is not None and np.abs(truth.shifts).max() > 0.5

    run("train", "sim/particles.star", "-o", "model.keras", "--size", 32, "--epochs", 2,
        "--batch-size", 32, "--features", 16, "--steps-per-epoch", 8, "--threads", 2)
    assert os.path.exists(tmp_path / "model.keras")

    out = run("recover", "sim/particles.star", "-m", "model.keras", "-o", "recovered.star",
              "--steps", 100, "--threads", 2)
    assert "embed: 300/300" in out and "recover:" in out
    rec = read_star(tmp_path / "recovered.star")
    assert rec.quaternions is not None
    # Orientations are new; the input shifts and CTF are kept.
    assert np.median(geometry.distance(rec.quaternions, truth.quaternions)) > 0.1
    np.testing.assert_allclose(rec.shifts, truth.shifts, atol=1e-4)
    np.testing.assert_allclose(rec.ctf["defocus_u"], truth.ctf["defocus_u"], rtol=1e-6)
    arrays = np.load(tmp_path / "recovered.npz")
    assert arrays["residual"].shape == (300,)

    # With the true orientations the half maps agree to near Nyquist (2 px) and the map
    # matches the map it was simulated from.
    out = run("reconstruct", "sim/particles.star", "-o", "truth.mrc", "--reference", MAP)
    fsc = np.loadtxt(tmp_path / "truth_fsc.txt")
    px = truth.pixel_size
    assert fsc.shape[1] == 3
    k = np.searchsorted(fsc[:, 0], 1 / (4 * px))             # half way to Nyquist
    assert fsc[k, 1] > 0.8 and fsc[k, 2] > 0.8, fsc[k]
    run("reconstruct", "recovered.star", "-o", "recovered.mrc")
    for name in ("recovered.mrc", "recovered_half1.mrc", "recovered_half2.mrc"):
        assert os.path.exists(tmp_path / name)

    out = run("compare", "recovered.star", "sim/particles.star", "-o", "aligned.star")
    median = float(out.split("rotation + handedness: median ")[1].split()[0])
    assert np.isfinite(median) and os.path.exists(tmp_path / "aligned.star")
    # The truth turned by a global rotation and mirrored (what recovery cannot tell
    # apart) compares at zero error; the truth with a random orientation per particle
    # does not.
    b = geometry.uniform_quaternions(1, seed=7)[0]
    turned = geometry.multiply(geometry.multiply([0.0, 0.0, 0.0, 1.0], truth.quaternions), b)
    write_star(tmp_path / "turned.star", truth.with_records(quaternions=turned))
    write_star(tmp_path / "random.star",
               truth.with_records(quaternions=geometry.uniform_quaternions(300, seed=8)))
    out = run("compare", "turned.star", "sim/particles.star")
    assert float(out.split("rotation + handedness: median ")[1].split()[0]) < 1e-3, out
    out = run("compare", "random.star", "sim/particles.star")
    assert float(out.split("rotation + handedness: median ")[1].split()[0]) > 1.5, out

    # Refusals: existing outputs, a missing model.
    code, out = orientlearn("reconstruct", "recovered.star", "-o", "recovered.mrc", cwd=tmp_path)
    assert code == 2 and "exists: choose another name or pass --overwrite" in out
    code, out = orientlearn("recover", "sim/particles.star", "-m", "missing.keras", "-o",
                            "r2.star", cwd=tmp_path)
    assert code == 2 and "missing.keras" in out
