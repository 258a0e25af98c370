"""Tests for orientlearn.core.alignment: O(4) and rotation + handedness alignment, errors."""
import numpy as np
import pytest

from orientlearn.core import alignment as al
from orientlearn.core import geometry as geo
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

P = 1000


def _random_orthogonal(det, seed):
    A = np.linalg.qr(np.random.default_rng(seed).standard_normal((4, 4)))[0]
    if np.sign(np.linalg.det(A)) != det:
        A[:, 0] *= -1
    return A


def _random_signs(n, seed):
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, 1))


def _perturb(q, sigma, seed):
    """Right-multiply by small random rotations (axis-angle components ~ N(0, sigma))."""
    v = np.random.default_rng(seed).standard_normal((len(q), 3)) * sigma
    angle = np.linalg.norm(v, axis=1)
    noise = np.concatenate([np.cos(angle / 2)[:, None],
                            np.sin(angle / 2)[:, None] * v / angle[:, None]], axis=1)
    return geo.multiply(q, noise), angle


def _blob_projection(centres, R, n=21, half_width=6.0, sigma=0.9):
    """Real-space projector of a sum of Gaussian blobs, by direct summation along z.

    ``p(x, y) = sum_z V(R^T (x, y, z))`` on an ``n^3`` grid: the convention of geometry.py.
    """
    t = np.linspace(-half_width, half_width, n)
    z, y, x = np.meshgrid(t, t, t, indexing="ij")              # vol[z, y, x]
    r = np.stack([x, y, z], axis=-1) @ R                       # rows: R^T (x, y, z)
    d2 = ((r[..., None, :] - centres) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2)).sum(-1).sum(0)       # integrate over z -> img[y, x]


@pytest.mark.parametrize("det", [1, -1])
def test_align_o4_recovers_known_transform(det):
    q = geo.uniform_quaternions(P, seed=1)
    A = _random_orthogonal(det, seed=10 + det)
    q_est = (q @ A.T) * _random_signs(P, 2)
    T, q_al = al.align_o4(q, q_est)
    assert np.sign(np.linalg.det(T)) == det
    np.testing.assert_allclose(T @ T.T, np.eye(4), atol=1e-10)
    assert al.orientation_errors(q, q_al).max() < 1e-6
    # T undoes A up to the harmless global sign of the quaternions.
    assert min(np.abs(T @ A - np.eye(4)).max(), np.abs(T @ A + np.eye(4)).max()) < 1e-6


def test_align_rotation_handedness_recovers_rotation_and_flip():
    q = geo.uniform_quaternions(P, seed=3)
    a = geo.uniform_quaternions(1, seed=4)[0]
    for flipped in (False, True):
        q_est = geo.multiply(al.handedness_flip(q) if flipped else q, a) * _random_signs(P, 5)
        info, q_al = al.align_rotation_handedness(q, q_est)
        assert info["flipped"] == flipped
        assert al.orientation_errors(q, q_al).max() < 1e-6
        # the reported matrix reproduces the aligned set, and a undoes the rotation
        np.testing.assert_allclose(np.abs(np.sum(al.apply_quaternion_map(info["matrix"], q_est)
                                                 * q_al, axis=1)), 1.0, atol=1e-12)
        # the flip is an automorphism (k q k^-1), so flip(q a) a' = q needs a' = flip(a)^-1
        expected = geo.conjugate(al.handedness_flip(a) if flipped else a)
        assert geo.distance(info["rotation"], expected) < 1e-6


def test_handedness_flip_matches_real_space_projection_of_mirrored_object():
    """Projecting V(x, y, -z) at R equals projecting V at the flipped orientation."""
    rng = np.random.default_rng(6)
    centres = rng.uniform(-3, 3, size=(5, 3))                  # an asymmetric object
    mirrored = centres * np.array([1.0, 1.0, -1.0])            # V'(r) = V(J r)
    for q in geo.uniform_quaternions(3, seed=7):
        R = geo.quaternion_to_matrix(q)
        R_flip = geo.quaternion_to_matrix(al.handedness_flip(q))
        img_mirrored = _blob_projection(mirrored, R)
        np.testing.assert_allclose(_blob_projection(centres, R_flip), img_mirrored, atol=1e-9)
        # ... and the flip is not trivial: the original object at R looks different.
        assert np.abs(_blob_projection(centres, R) - img_mirrored).max() > 0.1


def test_independent_sets_give_random_error():
    expected = al.expected_random_error()
    assert expected == pytest.approx(np.pi / 2 + 2 / np.pi)
    # numerical check of the analytic value from the density (1 - cos t) / pi
    t = np.linspace(0, np.pi, 200001)
    assert np.trapz(t * (1 - np.cos(t)) / np.pi, t) == pytest.approx(expected, rel=1e-8)
    q1 = geo.uniform_quaternions(2000, seed=8)
    q2 = geo.uniform_quaternions(2000, seed=9)
    raw = geo.distance(q1, q2).mean()
    assert raw == pytest.approx(expected, rel=0.02)
    res = al.compare_orientations(q1, q2)
    # alignment fits a little noise (6 / 3 parameters), so slightly below, but not by much
    assert 0.95 * expected < res["o4_mean"] <= res["rot_mean"] + 1e-12
    assert res["rot_mean"] < raw + 1e-12
    assert res["rot_mean"] == pytest.approx(expected, rel=0.03)
    assert res["o4_median"] == pytest.approx(al.expected_random_error("median"), rel=0.05)


def test_noise_on_known_transform_gives_noise_level_error():
    q = geo.uniform_quaternions(P, seed=11)
    noisy, angle = _perturb(q, 0.05, seed=12)
    A = _random_orthogonal(-1, seed=13)
    res = al.compare_orientations(q, noisy @ A.T)
    assert res["o4_mean"] == pytest.approx(angle.mean(), rel=0.05)
    assert res["o4_median"] == pytest.approx(np.median(angle), rel=0.1)
    # an O(4) transform with det -1 is never the harmless kind: rotation alignment fails
    assert res["rot_mean"] > 0.5


def test_rotation_alignment_does_not_remove_detector_side_rotation():
    q = geo.uniform_quaternions(P, seed=14)
    b = geo.axis_angle_quaternion([1.0, 0.5, 0.0], np.pi / 2)   # detector-side rotation
    a = geo.uniform_quaternions(1, seed=15)[0]
    res = al.compare_orientations(q, geo.multiply(geo.multiply(b, q), a))
    assert res["o4_mean"] < 1e-6                                  # O(4) removes everything
    assert res["rot_mean"] > 0.5 and res["rot_median"] > 0.5       # the harmful part stays
    # the conjugation is not removed either
    res = al.compare_orientations(q, geo.conjugate(q))
    assert res["o4_mean"] < 1e-6 and res["rot_mean"] > 0.5


def test_in_plane_rotation_by_pi_is_harmless_as_handedness():
    """Rotating every image by pi = the point-inverted object: removed by the rotation fit."""
    q = geo.uniform_quaternions(P, seed=16)
    q_est = geo.multiply(geo.in_plane_quaternion(np.pi), q)
    info, q_al = al.align_rotation_handedness(q, q_est)
    assert info["flipped"] and al.orientation_errors(q, q_al).max() < 1e-6


def test_error_components():
    q = geo.uniform_quaternions(200, seed=17)
    alpha = np.linspace(-3.0, 3.0, 200)
    # pure in-plane (detector-side) rotation: same viewing direction
    comp = al.error_components(q, geo.multiply(geo.in_plane_quaternion(alpha), q))
    np.testing.assert_allclose(comp["viewing_direction"], 0.0, atol=1e-6)
    np.testing.assert_allclose(comp["in_plane"], np.abs(alpha), atol=1e-6)
    # tilt about the detector x axis by beta: viewing direction moves by beta, no in-plane
    beta = np.linspace(0.0, 3.0, 200)
    tilt = geo.axis_angle_quaternion([1.0, 0.0, 0.0], beta)
    comp = al.error_components(q, geo.multiply(tilt, q))
    np.testing.assert_allclose(comp["viewing_direction"], beta, atol=1e-6)
    np.testing.assert_allclose(comp["in_plane"], 0.0, atol=1e-6)
    # opposite viewing directions are handled
    comp = al.error_components(q, geo.multiply(geo.axis_angle_quaternion([0, 1.0, 0], np.pi), q))
    np.testing.assert_allclose(comp["viewing_direction"], np.pi, atol=1e-6)
    assert np.all(np.isfinite(comp["in_plane"]))


@pytest.mark.parametrize("symmetry", ["C4", "D2"])
def test_symmetric_alignment_with_random_mates(symmetry):
    group = geo.symmetry_group(symmetry)
    q = geo.uniform_quaternions(500, seed=18)
    mates = geo.multiply(q, group[np.random.default_rng(19).integers(len(group), size=len(q))])
    a = geo.uniform_quaternions(1, seed=20)[0]
    q_est = geo.multiply(al.handedness_flip(mates), a)
    res = al.compare_orientations(q, q_est, symmetry=symmetry)
    assert res["rot_flipped"]
    assert res["rot_errors"].max() < 1e-6 and res["o4_errors"].max() < 1e-6
    # without the symmetry the mates look like errors
    assert al.orientation_errors(q, res["rot_aligned"]).mean() > 0.5
    assert res["random_mean"] < al.expected_random_error()


def test_deterministic_and_fast_path_shapes():
    q = geo.uniform_quaternions(300, seed=21)
    q_est, _ = _perturb(q @ _random_orthogonal(1, 22).T, 0.2, seed=23)
    r1 = al.compare_orientations(q, q_est)
    r2 = al.compare_orientations(q, q_est)
    np.testing.assert_array_equal(r1["o4_transform"], r2["o4_transform"])
    for key in ("o4_errors", "rot_errors", "o4_in_plane", "rot_viewing_direction"):
        assert r1[key].shape == (300,)
    assert r1["o4_mean"] <= r1["rot_mean"] + 1e-12
    with pytest.raises(ValueError):
        al.align_o4(q, q_est[:10])
