"""core/scale.py: particles resampled so their diameter fills a fixed fraction of the box."""
import numpy as np
import pytest

from orientlearn.core.scale import ParticleScaler, fourier_resize
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def _blob(box, pixel_size, sigma_A, centre_px=(0.0, 0.0), elongation=1.6):
    """An elongated Gaussian particle (sigma_A along y, elongation * sigma_A along x)."""
    y, x = (np.indices((box, box)) - box // 2).astype(float)
    y = (y - centre_px[0]) * pixel_size
    x = (x - centre_px[1]) * pixel_size
    return np.exp(-0.5 * ((y / sigma_A) ** 2 + (x / (elongation * sigma_A)) ** 2))[None]


def _moments(img):
    """Centroid (y, x) relative to the centre, and sigma along y (px)."""
    n = img.shape[-1]
    y, x = np.indices(img.shape) - n // 2
    w = img / img.sum()
    cy, cx = (w * y).sum(), (w * x).sum()
    return np.array([cy, cx]), np.sqrt((w * (y - cy) ** 2).sum())


# small boxes, particle a third of the box, and larger boxes / coarser pixels
@pytest.mark.parametrize("box,pixel_size,network_box", [
    (30, 2.0, 32), (36, 1.3, 48), (48, 3.1, 32), (128, 1.06, 64), (40, 0.9, 40)])
def test_diameter_fills_the_same_fraction(box, pixel_size, network_box):
    diameter_A = box * pixel_size / 3.0
    sigma_A = diameter_A / 8.0  # the long axis's 4 sigma spans ~ 80% of the diameter
    scaler = ParticleScaler(diameter_A, pixel_size, box, network_box)
    out = scaler(_blob(box, pixel_size, sigma_A))
    assert out.shape == (1, network_box, network_box) and out.dtype == np.float32
    centre, sigma = _moments(out[0])
    expected = sigma_A / diameter_A * scaler.fill * network_box
    assert abs(sigma - expected) / expected < 0.03, (sigma, expected)
    assert np.linalg.norm(centre) < 0.05
    # the rounding of the resampled box leaves the fill within 2% of the target
    assert abs(scaler.diameter_px / (scaler.fill * network_box) - 1) < 0.02


def test_same_particle_from_different_cameras_looks_the_same():
    diameter_A = 60.0
    views = []
    for box, px in [(36, 5.0), (48, 3.75), (90, 2.0)]:
        scaler = ParticleScaler(diameter_A, px, box, 40)
        views.append(scaler(_blob(box, px, 7.0, centre_px=(0.0, 0.0)))[0])
    for v in views[1:]:
        corr = np.corrcoef(views[0].ravel(), v.ravel())[0, 1]
        assert corr > 0.995, corr


def test_shifts_scale_with_the_pixels():
    box, px = 40, 2.0
    scaler = ParticleScaler(box * px / 3, px, box, 64)
    shift = np.array([3.0, -2.0])  # input pixels (y, x)
    out = scaler(_blob(box, px, 3.0, centre_px=shift))
    centre, _ = _moments(out[0])
    np.testing.assert_allclose(centre, scaler.to_network_shifts(shift[None])[0], atol=0.05)
    np.testing.assert_allclose(scaler.to_input_shifts(scaler.to_network_shifts(shift[None])),
                               shift[None])


def test_values_are_preserved_and_background_padding():
    const = np.full((3, 30, 30), 2.5, np.float32)
    scaler = ParticleScaler(20.0, 2.0, 30, 48)  # upsampled and padded
    np.testing.assert_allclose(scaler(const), 2.5, atol=1e-4)
    down = ParticleScaler(80.0, 1.0, 96, 32)  # Fourier-cropped
    np.testing.assert_allclose(down(np.full((2, 96, 96), -1.0)), -1.0, atol=1e-4)
    np.testing.assert_allclose(fourier_resize(const, 17), 2.5, atol=1e-4)


def test_refusals():
    with pytest.raises(ValueError, match="exceeds the particle box"):
        ParticleScaler(200.0, 1.0, 64, 32)
    with pytest.raises(ValueError, match="diameter must be > 0"):
        ParticleScaler(0.0, 1.0, 64, 32)
    with pytest.raises(ValueError, match="fill must be"):
        ParticleScaler(30.0, 1.0, 64, 32, fill=1.5)
    with pytest.raises(ValueError, match=r"expected images \(M, 64, 64\)"):
        ParticleScaler(30.0, 1.0, 64, 32)(np.zeros((2, 60, 60)))
