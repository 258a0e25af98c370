"""The wizards' computations."""
import numpy as np
import pytest

from orientlearn.core import image_ops
from orientlearn.tests.unittest_bridge import pytest_load_tests
from orientlearn.wizards import helpers

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def test_snr_sigma2_round_trip():
    # The wizard and the simulation use the same definition of SNR (image_ops).
    assert image_ops.snr_db_to_sigma2(-12.0) == pytest.approx(10 ** 1.2)
    assert image_ops.snr_db_to_sigma2(0.0, signal_variance=3.0) == pytest.approx(3.0)
    for snr in (-20.0, -12.0, 0.0, 7.5):
        assert image_ops.sigma2_to_snr_db(image_ops.snr_db_to_sigma2(snr)) == pytest.approx(snr)
    assert image_ops.sigma2_to_snr_db(0.0) == float("inf")
    np.testing.assert_allclose(image_ops.sigma2_to_snr_db(np.array([0.0, 1.0, 10.0])),
                               [np.inf, 0.0, -10.0])


def test_noisy_preview_has_requested_noise():
    x = np.linspace(-1, 1, 24)
    z, y, xx = np.meshgrid(x, x, x, indexing="ij")
    vol = np.exp(-((xx - 0.2) ** 2 + y ** 2 + (z + 0.1) ** 2) / 0.1).astype(np.float32)
    clean, noisy = helpers.noisy_preview(vol, sigma2=4.0, seed=1)
    assert clean.shape == noisy.shape == (24, 24)
    assert np.var(noisy - clean) == pytest.approx(4.0, rel=0.25)
    assert helpers.projection_variance(vol, n_views=4) > 0


def test_box_for_pixel_size_is_even_and_keeps_physical_box():
    box, px = helpers.box_for_pixel_size(116, 1.0, 2.4)
    assert box % 2 == 0 and box == 48
    assert box * px == pytest.approx(116 * 1.0)
    box, px = helpers.box_for_pixel_size(76, 3.667, 3.667)
    assert box == 76 and px == pytest.approx(3.667)
    with pytest.raises(ValueError):
        helpers.box_for_pixel_size(64, 1.0, 0.0)


def test_max_shift_fraction():
    assert helpers.max_shift_for_fraction(128, 0.1) == pytest.approx(12.8)
    with pytest.raises(ValueError):
        helpers.max_shift_for_fraction(128, 0.7)


def test_symmetry_choices_orders():
    orders = {name: order for name, order, _ in helpers.symmetry_choices()}
    assert orders["C1"] == 1 and orders["C4"] == 4 and orders["D3"] == 6
    assert orders["T"] == 12 and orders["O"] == 24 and orders["I"] == 60
    assert "1/60" in helpers.symmetry_restriction("I")
    with pytest.raises(ValueError):
        helpers.symmetry_restriction("X9")
