"""Tests of core/reconstruction.py and core/fsc.py: direct Fourier inversion, FSC,
handedness, ASTRA geometry.

Ground truth is a sum of Gaussian blobs, whose projections are known in closed form
(a Gaussian projects to a 2-D Gaussian centred at ``(R c)_xy + t``), so the tests do not
depend on any projector under test.
"""
import numpy as np
import pytest

from orientlearn.core import fsc, geometry, projection, reconstruction
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

N = 32


def make_blobs(n_blobs=12, extent=8.0, seed=0):
    """Asymmetric object: centres ``(B, 3)`` (x, y, z) pixels, amplitudes, sigmas."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-extent, extent, (n_blobs, 3)), rng.uniform(0.5, 1.5, n_blobs),
            rng.uniform(1.2, 2.5, n_blobs))


def c4_blobs(seed=0):
    """The blobs of ``make_blobs`` replicated under the 4-fold rotation about z."""
    centres, amps, sigmas = make_blobs(4, seed=seed)
    rot = geometry.quaternion_to_matrix(geometry.symmetry_group("C4"))
    return (np.concatenate([centres @ r.T for r in rot]), np.tile(amps, 4), np.tile(sigmas, 4))


def blob_volume(n, blobs):
    centres, amps, sigmas = blobs
    g = np.arange(n) - n // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((n, n, n))
    for c, a, s in zip(centres, amps, sigmas):
        vol += a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol


def blob_projections(n, blobs, rotations, shifts=None):
    """Exact projections ``(M, n, n)``: p(x, y) = integral V(R^T (x, y, z)) dz."""
    centres, amps, sigmas = blobs
    g = np.arange(n) - n // 2
    y, x = np.meshgrid(g, g, indexing="ij")
    rc_ = np.einsum("mij,bj->mbi", rotations, centres)
    if shifts is not None:
        rc_[:, :, :2] += shifts[:, None, :]
    out = np.zeros((len(rotations), n, n))
    for b, (a, s) in enumerate(zip(amps, sigmas)):
        dx = x[None] - rc_[:, b, 0, None, None]
        dy = y[None] - rc_[:, b, 1, None, None]
        out += a * np.sqrt(2 * np.pi) * s * np.exp(-(dx ** 2 + dy ** 2) / (2 * s * s))
    return out.astype(np.float32)


def simple_ctf(size, pixel_size, defocus):
    """Phase-contrast CTFs ``(M, size, size)`` in fft2 layout (300 kV, Cs 2.7 mm, 10%
    amplitude contrast); defocus in A, ``(M,)``."""
    wavelength, cs, ac = 0.0197, 2.7e7, 0.1
    k = np.fft.fftfreq(size, pixel_size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    chi = (np.pi * wavelength * np.asarray(defocus)[:, None, None] * k2
           - 0.5 * np.pi * cs * wavelength ** 3 * k2 ** 2)
    return (-np.sqrt(1 - ac ** 2) * np.sin(chi) - ac * np.cos(chi)).astype(np.float32)


def apply_ctf(images, ctfs):
    return np.fft.ifft2(np.fft.fft2(images) * ctfs).real.astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    blobs = make_blobs()
    q = geometry.uniform_quaternions(300, seed=1)
    rot = geometry.quaternion_to_matrix(q)
    return dict(blobs=blobs, truth=blob_volume(N, blobs), q=q, rot=rot,
                images=blob_projections(N, blobs, rot))


def test_true_orientations_reach_nyquist(scene):
    calls = []
    vol = reconstruction.reconstruct_fourier(scene["images"], scene["q"],
                                 progress=lambda d, t: calls.append((d, t)))
    assert vol.shape == (N, N, N) and vol.dtype == np.float32
    freq, curve = fsc.fsc(vol, scene["truth"])
    assert fsc.resolution_at(freq, curve, 0.5) < 2.5          # Nyquist is 2 pixels
    assert curve[: N // 2 - 3].min() > 0.95
    # Right scale, not just right shape: least-squares gain near 1.
    gain = (vol * scene["truth"]).sum() / (scene["truth"] ** 2).sum()
    assert abs(gain - 1) < 0.05
    assert calls[-1] == (300, 300)
    # Matrices and quaternions are the same input.
    same = reconstruction.reconstruct_fourier(scene["images"][:40], scene["rot"][:40], n_threads=1)
    also = reconstruction.reconstruct_fourier(scene["images"][:40], scene["q"][:40], n_threads=2)
    np.testing.assert_allclose(same, also, atol=1e-4 * np.abs(same).max())


def test_random_orientations_collapse(scene):
    wrong = geometry.uniform_quaternions(300, seed=5)
    vol = reconstruction.reconstruct_fourier(scene["images"], wrong)
    freq, curve = fsc.fsc(vol, scene["truth"])
    assert fsc.resolution_at(freq, curve, 0.5) > 8.0
    assert np.nanmean(curve[4:]) < 0.3


def test_shifts_are_corrected(scene):
    rng = np.random.default_rng(3)
    shifts = rng.uniform(-3, 3, (300, 2))
    images = blob_projections(N, scene["blobs"], scene["rot"], shifts)
    good = reconstruction.reconstruct_fourier(images, scene["q"], shifts=shifts)
    bad = reconstruction.reconstruct_fourier(images, scene["q"])
    f, c_good = fsc.fsc(good, scene["truth"])
    _, c_bad = fsc.fsc(bad, scene["truth"])
    assert fsc.resolution_at(f, c_good, 0.5) < 2.5
    assert fsc.resolution_at(f, c_bad, 0.5) > 4.0


def test_half_map_fsc_noisy_lower_than_clean(scene):
    images = scene["images"]
    noisy = images + np.random.default_rng(0).normal(0, 2 * images.std(), images.shape)
    h1, h2, f, clean = fsc.half_map_fsc(images, scene["q"], seed=7)
    assert h1.shape == (N, N, N) and h2.shape == (N, N, N)
    _, _, _, noisy_curve = fsc.half_map_fsc(noisy.astype(np.float32), scene["q"], seed=7)
    assert fsc.resolution_at(f, noisy_curve, 0.5) > fsc.resolution_at(f, clean, 0.5) + 1.0
    assert np.nanmean(noisy_curve[1:]) < np.nanmean(clean[1:]) - 0.1
    # Same seed, same split, same maps.
    again = fsc.half_map_fsc(images, scene["q"], seed=7)
    np.testing.assert_array_equal(again[0], h1)


def test_ctf_correction_improves_fsc(scene):
    pixel = 4.0
    defocus = np.random.default_rng(2).uniform(8000, 20000, 300)
    ctfs = simple_ctf(N, pixel, defocus)
    images = apply_ctf(scene["images"], ctfs)
    plain = reconstruction.reconstruct_fourier(images, scene["q"])
    corrected = reconstruction.reconstruct_fourier(images, scene["q"], ctfs=ctfs)
    # A callable gives CTFs on the padded grid (same pixel size, finer frequency step).
    exact = reconstruction.reconstruct_fourier(
        images, scene["q"], ctfs=lambda idx, size: simple_ctf(size, pixel, defocus[idx]))
    f, c_plain = fsc.fsc(plain, scene["truth"], pixel)
    for vol in (corrected, exact):
        _, c_corr = fsc.fsc(vol, scene["truth"], pixel)
        assert np.nanmean(c_corr[1:]) > np.nanmean(c_plain[1:]) + 0.2
        assert fsc.resolution_at(f, c_corr, 0.5) < fsc.resolution_at(f, c_plain, 0.5)


def test_symmetry_helps_with_few_images():
    blobs = c4_blobs()
    truth = blob_volume(N, blobs)
    q = geometry.uniform_quaternions(12, seed=11)
    images = blob_projections(N, blobs, geometry.quaternion_to_matrix(q))
    c1 = reconstruction.reconstruct_fourier(images, q, symmetry="C1")
    c4 = reconstruction.reconstruct_fourier(images, q, symmetry="C4")
    f, fsc_c1 = fsc.fsc(c1, truth)
    _, fsc_c4 = fsc.fsc(c4, truth)
    assert np.nanmean(fsc_c4[1:]) > np.nanmean(fsc_c1[1:]) + 0.05
    assert fsc.resolution_at(f, fsc_c4, 0.5) < fsc.resolution_at(f, fsc_c1, 0.5)


def test_fsc_of_a_map_with_itself_is_one(scene):
    freq, curve = fsc.fsc(scene["truth"], scene["truth"], pixel_size=3.0)
    assert len(freq) == N // 2 + 1
    assert freq[-1] == pytest.approx(1 / 6.0)                # Nyquist 1 / (2 * pixel)
    np.testing.assert_allclose(curve, 1.0, atol=1e-9)
    assert fsc.resolution_at(freq, curve, 0.143) == pytest.approx(6.0)
    # Unrelated noise correlates at ~0 beyond the first shells.
    rng = np.random.default_rng(0)
    _, noise = fsc.fsc(rng.standard_normal((N,) * 3), rng.standard_normal((N,) * 3))
    assert np.abs(noise[3:]).max() < 0.2


def test_resolution_at_interpolates():
    f = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    assert fsc.resolution_at(f, [1.0, 0.9, 0.7, 0.3, 0.1], 0.5) == pytest.approx(1 / 0.25)
    # Never below: the sampling limit 1 / max frequency.
    assert fsc.resolution_at(f, [1.0, 0.9, 0.8, 0.7, 0.6], 0.5) == pytest.approx(2.5)
    # A shell without power ends the curve: nothing is known beyond it (was: the gap
    # was spanned, and a curve with a gap could claim Nyquist).
    assert fsc.resolution_at(f, [1.0, 0.9, np.nan, 0.1, 0.0], 0.5) == pytest.approx(1 / 0.1)
    assert fsc.resolution_at(f, [1.0, 0.9, np.nan, 0.8, 0.7], 0.5) == pytest.approx(1 / 0.1)
    # A NaN DC shell (zero-mean maps) is ignored.
    assert fsc.resolution_at(f, [np.nan, 0.9, 0.7, 0.3, 0.1], 0.5) == pytest.approx(1 / 0.25)
    # Crossing between DC and the first shell; no shell above the threshold at all.
    assert fsc.resolution_at(f, [1.0, 0.2, 0.1, 0.0, 0.0], 0.5) == pytest.approx(
        1 / (0.1 * 0.5 / 0.8))
    assert fsc.resolution_at(f, [np.nan, 0.2, 0.1, 0.0, 0.0], 0.5) == float("inf")


def test_handedness_is_resolved(scene):
    # Orientations J R J (J = diag(1, 1, -1)) are the other handedness: same images,
    # mirrored map.
    jay = np.diag([1.0, 1.0, -1.0])
    mirrored_rot = jay @ scene["rot"] @ jay
    vol = reconstruction.reconstruct_fourier(scene["images"], mirrored_rot)
    f, direct = fsc.fsc(vol, scene["truth"])
    f, curve, flipped = fsc.fsc_with_handedness(vol, scene["truth"])
    assert flipped
    assert fsc.resolution_at(f, curve, 0.5) < 2.5
    assert np.nanmean(direct[1:]) < np.nanmean(curve[1:]) - 0.3
    _, _, flipped_again = fsc.fsc_with_handedness(scene["truth"], scene["truth"])
    assert not flipped_again


def test_soft_spherical_mask():
    mask = reconstruction.soft_spherical_mask(N, radius=8, width=4)
    c = N // 2
    assert mask.shape == (N, N, N) and mask[c, c, c] == 1.0
    assert mask[c, c, c + 8] == 1.0 and mask[c, c, c + 12] == 0.0
    assert 0 < mask[c, c, c + 10] < 1
    np.testing.assert_allclose(mask, mask[::-1, :, :][np.r_[-1, 0:N - 1]], atol=0)


def test_astra_vectors_match_convention():
    # Where the detector of a parallel3d_vec geometry sees a point c (volume coordinates
    # relative to voxel N // 2) must be where our convention puts it: (R c)_xy + t.
    rng = np.random.default_rng(0)
    q = geometry.uniform_quaternions(20, seed=4)
    rot = geometry.quaternion_to_matrix(q)
    shifts = rng.uniform(-2, 2, (20, 2))
    point = np.array([3.0, -2.0, 5.0])
    vec = projection.astra_vectors(q, N, shifts)
    ray, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    np.testing.assert_allclose(np.einsum("mi,mi->m", ray, u), 0, atol=1e-12)
    # ASTRA pixel (i, j) is centred at d + (j - (N-1)/2) u + (i - (N-1)/2) v.
    col = np.einsum("mi,mi->m", point - d, u) + (N - 1) / 2
    row = np.einsum("mi,mi->m", point - d, v) + (N - 1) / 2
    ours = rot @ point
    np.testing.assert_allclose(col, ours[:, 0] + shifts[:, 0] + N // 2, atol=1e-9)
    np.testing.assert_allclose(row, ours[:, 1] + shifts[:, 1] + N // 2, atol=1e-9)
    # No shifts is zero shifts (the projector's ASTRA path uses the same vectors).
    np.testing.assert_array_equal(projection.astra_vectors(q, N),
                                  projection.astra_vectors(rot, N, np.zeros((20, 2))))


def test_astra_reconstruction(scene):
    astra = pytest.importorskip("astra")
    if not astra.use_cuda():
        pytest.skip("ASTRA's 3-D reconstruction needs a CUDA GPU")
    vol = reconstruction.reconstruct_astra(scene["images"], scene["q"], iterations=30)
    f, curve = fsc.fsc(vol, scene["truth"])
    assert fsc.resolution_at(f, curve, 0.5) < 3.0


def test_with_imaging_projector(scene):
    images = np.asarray(projection.project(scene["truth"].astype(np.float32), scene["rot"]))
    vol = reconstruction.reconstruct_fourier(images, scene["q"])
    f, curve = fsc.fsc(vol, scene["truth"])
    assert fsc.resolution_at(f, curve, 0.5) < 2.6
