"""Tests for orientlearn.viewers.plots: every figure renders to a PNG of the expected size."""
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from orientlearn.core import geometry as geo
from orientlearn.tests.unittest_bridge import pytest_load_tests
from orientlearn.viewers import plots

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

DPI = 50


def _render(fig, tmp_path, name):
    """Save, read back, check size and that something was drawn; returns the RGBA array."""
    path = tmp_path / f"{name}.png"
    plots.save_figure(fig, str(path), dpi=DPI)
    img = mpimg.imread(str(path))
    w, h = fig.get_size_inches()
    # figsize * dpi, up to the rounding of fractional pixels
    assert abs(img.shape[0] - h * DPI) < 1 and abs(img.shape[1] - w * DPI) < 1
    rgb = img[..., :3]
    # not blank: a fair share of pixels differ from the (white) background
    assert np.mean(np.any(rgb < 0.9, axis=-1)) > 0.01
    return img


def test_particle_gallery(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((10, 16, 16))
    fig = plots.plot_particle_gallery(images, titles=[f"#{k}" for k in range(10)], ncols=4)
    assert len([ax for ax in fig.axes if ax.images]) == 10
    _render(fig, tmp_path, "gallery")


def test_angular_distribution(tmp_path):
    q = geo.uniform_quaternions(3000, seed=1)
    fig = plots.plot_angular_distribution(q)
    _render(fig, tmp_path, "angles")
    # the helper's angles agree with geometry's viewing directions and Euler psi
    az, el, psi = plots._quaternion_angles(q[:50])
    v = geo.viewing_directions(q[:50])
    np.testing.assert_allclose(np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                         np.sin(el)], -1), v, atol=1e-9)
    _, _, psi_ref = geo.matrix_to_euler(geo.quaternion_to_matrix(q[:50]))
    np.testing.assert_allclose(np.angle(np.exp(1j * (psi - psi_ref))), 0, atol=1e-9)


def test_training_and_recovery_history(tmp_path):
    history = {"loss": list(np.exp(-np.arange(20) / 5) + 0.1),
               "val_loss": list(np.exp(-np.arange(20) / 6) + 0.12)}
    fig = plots.plot_training_history(history)
    assert len(fig.axes[0].lines) == 2
    _render(fig, tmp_path, "history")
    _render(plots.plot_recovery_history(np.exp(-np.arange(500) / 100)), tmp_path, "recovery")


def test_distance_density(tmp_path):
    rng = np.random.default_rng(2)
    d_true = rng.uniform(0, np.pi, 5000)
    d_est = np.clip(d_true + rng.normal(0, 0.2, d_true.size), 0, np.pi)
    _render(plots.plot_distance_density(d_true, d_est), tmp_path, "density")


def test_error_histograms(tmp_path):
    rng = np.random.default_rng(3)
    fig = plots.plot_error_histograms({"O(4)": np.abs(rng.normal(0, 0.2, 1000)),
                                       "rotation": rng.uniform(0, np.pi, 1000)})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 2 and "median" in labels[0]
    _render(fig, tmp_path, "errors")


def test_fsc(tmp_path):
    pixel_size = 3.667
    freq = np.linspace(0, 1 / (2 * pixel_size), 40)
    curve = 1 / (1 + np.exp((freq - 0.08) / 0.008))
    fig = plots.plot_fsc([("half maps", freq, curve), ("vs reference", freq, curve ** 2)],
                         pixel_size=pixel_size)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # the 0.5 crossing of the logistic is at 0.08 1/A: 12.5 A
    assert "12.5 Å @0.5" in labels[0]
    assert plots._crossing(freq, curve, 0.5) == pytest.approx(0.08, abs=1e-3)
    _render(fig, tmp_path, "fsc")


def test_central_slices(tmp_path):
    z, y, x = np.mgrid[:20, :24, :28]
    vol = np.exp(-((x - 14) ** 2 + (y - 10) ** 2 + (z - 8) ** 2) / 20.0)
    fig = plots.plot_central_slices(vol)
    assert len([ax for ax in fig.axes if ax.images]) == 6
    _render(fig, tmp_path, "slices")


def test_no_pyplot_state():
    plots.plot_recovery_history([3.0, 2.0, 1.0])
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt
        assert plt.get_fignums() == []
