"""Shift search, reference-free centring and local refinement (core, no Scipion).

Small noiseless problems on the bundled 5j0n map with analytic answers: a particle
shifted by a known sub-pixel amount, orientations perturbed by a known angle.
"""
import os

import numpy as np
import pytest
import scipy.fft as sfft
from scipy.spatial.transform import Rotation

from orientlearn.core import (
    alignment,
    centering,
    ctf,
    geometry,
    image_ops,
    projection,
    refinement,
    simulation,
    volumes,
)
from orientlearn.core import alignment_search as als
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

CTF = dict(defocus_range=(1.0e4, 2.0e4))


DEMO_MAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "5j0n.mrc")


def _map(size):
    vol, voxel = volumes.read_volume(DEMO_MAP)
    return volumes.downsample_volume(vol, size), voxel * vol.shape[0] / size


@pytest.fixture(scope="module")
def map32():
    return _map(32)


def test_slice_values_are_the_projector_spectra(map32):
    vol, _ = map32
    R = geometry.quaternion_to_matrix(geometry.uniform_quaternions(5, seed=2))
    spec = projection.prepare_volume(vol)
    band = als.make_band(32, 15, r_min=0)
    got = als.slice_values(spec, R, band)
    images = projection.project(spec, R)
    want = sfft.rfft2(sfft.ifftshift(images, axes=(-2, -1))).reshape(5, -1)[:, band.flat]
    # Up to the projector's own cropping of a padded grid (the map fills the box).
    assert np.linalg.norm(got - want) < 0.01 * np.linalg.norm(want)
    assert np.linalg.norm(got[::-1] - want) > 0.3 * np.linalg.norm(want)


def test_shift_search_recovers_subpixel_shifts_with_ctf(map32):
    vol, voxel = map32
    n = 12
    R = geometry.quaternion_to_matrix(geometry.uniform_quaternions(n, seed=1))
    shifts = np.random.default_rng(0).uniform(-2.5, 2.5, (n, 2))     # sub-pixel amounts
    params = ctf.sample_ctf_params(n, seed=3, **CTF)
    images = image_ops._filter_padded(projection.project(vol, R), shifts=shifts,
                                      ctf_params=params, pixel_size=voxel)
    particles = als.ParticleSpectra(images, voxel, ctf=params)
    spec = projection.prepare_volume(vol, interleave=False)
    band = als.make_band(32, 12)
    found, scores = als.search_shifts(particles, np.arange(n), als.slice_values(spec, R, band),
                                      band, half_range=3.0)
    assert np.abs(found - shifts).max() < 0.2
    # The wrong sign would be 2|t| away: the search tells them apart.
    assert np.abs(-found - shifts).max() > 1.0
    assert np.all(scores > 0)


def test_newton_refinement_beats_the_grid(map32):
    """Started one grid step away, Newton steps end on the analytic peak."""
    vol, _ = map32
    R = geometry.quaternion_to_matrix(geometry.uniform_quaternions(4, seed=4))
    shifts = np.array([[0.37, -0.81], [1.42, 0.2], [-0.66, -0.13], [0.05, 1.5]])
    images = image_ops.shift_images(projection.project(vol, R), shifts)
    particles = als.ParticleSpectra(images)
    band = als.make_band(32, 14)
    model = als.slice_values(projection.prepare_volume(vol), R, band)
    x, ctf = particles.band_values(np.arange(4), band)
    cross = band.weight * np.conj(x) * ctf * model
    found, _ = als.refine_shifts(cross, als._norms(model, ctf, band), band, np.rint(shifts))
    assert np.abs(found - shifts).max() < 0.05


def test_fit_frame_translation_recovers_a_moved_origin():
    rng = np.random.default_rng(5)
    q = geometry.uniform_quaternions(50, seed=5)
    R = geometry.quaternion_to_matrix(q)
    c = np.array([1.5, -2.0, 0.7])
    truth = rng.uniform(-3, 3, (50, 2))
    est = truth + np.einsum("mij,j->mi", R[:, :2, :], c)
    c_fit, errors = alignment.fit_frame_translation(q, est, truth)
    np.testing.assert_allclose(c_fit, c, atol=1e-9)
    assert errors.max() < 1e-9


def test_centring_finds_the_particles_centres_of_mass(map32):
    """Noiseless CTF particles: offsets up to their centres of mass (the map's centre of
    mass projected, a 3-D translation the data cannot see) within 0.5 px."""
    vol, voxel = map32
    n = 300
    sim = simulation.simulate_particles(vol, n, max_shift=3.0, ctf=CTF, voxel_size=voxel, seed=6,
                                     return_clean=False)
    particles = als.ParticleSpectra(sim["images"], sim["pixel_size"], ctf=sim["ctf"])
    offsets, info = centering.centre_particles(particles, max_shift=6.0, diameter=28.0)
    _, errors = alignment.fit_frame_translation(sim["quaternions"], offsets, sim["shifts"])
    assert np.median(errors) < 0.5
    # Against doing nothing: the true offsets themselves are ~1.5 px.
    assert np.median(np.linalg.norm(sim["shifts"], axis=1)) > 1.0
    assert len(info["changes"]) >= 1


def test_centring_a_small_particle_at_a_fine_pixel_size():
    """A particle half the box across at 2.3 A/px, CTF 1-3 um: the CTF oscillates inside
    the centring's low-pass band and is ~0.1 at zero frequency. The default Wiener
    constant must restore the mass (0.1 left the offsets 0.8 px off, worse than none)."""
    small, _ = _map(16)
    vol = volumes.crop_or_pad_volume(small, 32)
    sim = simulation.simulate_particles(vol, 300, max_shift=2.0, voxel_size=2.3,
                                        ctf=dict(defocus_range=(1e4, 3e4)), seed=6,
                                        return_clean=False)
    particles = als.ParticleSpectra(sim["images"], sim["pixel_size"], ctf=sim["ctf"])
    offsets, _ = centering.centre_particles(particles, max_shift=3.0, diameter=16.0)
    _, errors = alignment.fit_frame_translation(sim["quaternions"], offsets, sim["shifts"])
    assert np.median(errors) < 0.2, np.median(errors)
    assert np.median(np.linalg.norm(sim["shifts"], axis=1)) > 0.8   # doing nothing: ~1 px


def _perturb(R, angle, seed):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(len(R), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return Rotation.from_rotvec(axis * angle).as_matrix() @ R


def test_refinement_returns_from_5_degrees(map32):
    vol, voxel = map32
    n = 200
    sim = simulation.simulate_particles(vol, n, max_shift=1.5, voxel_size=voxel, seed=7,
                                     return_clean=False)
    R = geometry.quaternion_to_matrix(sim["quaternions"])
    start = _perturb(R, np.deg2rad(5.0), seed=8)
    lines = []
    refiner = refinement.LocalRefiner(
        sim["images"], sim["pixel_size"],
        settings=refinement.RefinementSettings(shift_range=2.0, max_iterations=4, seed=1),
        log=lines.append)
    res = refiner.run(start, shifts=np.zeros((n, 2)))
    err = refinement._angles_between(geometry.quaternion_to_matrix(res.quaternions), R)
    assert np.degrees(np.median(err)) < 1.0
    assert np.median(np.linalg.norm(res.shifts - sim["shifts"], axis=1)) < 0.2
    # Gold standard: two disjoint halves of about equal size, each with its map.
    assert abs(int(res.halves.sum()) - n // 2) <= 1
    assert res.half_maps.shape == (2, 32, 32, 32)
    assert res.resolution < 3 * sim["pixel_size"]
    assert sum("Refinement iteration" in line for line in lines) == len(res.history) >= 2
