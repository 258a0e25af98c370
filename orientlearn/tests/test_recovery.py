"""Tests of orientation recovery from distances (orientlearn.core.recovery)."""
import numpy as np
import pytest

from orientlearn.benchmarking import quaternion_features
from orientlearn.core import alignment, graph, recovery, spectral
from orientlearn.core import geometry as geo
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

N_PARTICLES = 600


def feature_angle_to_distance(a):
    return np.arccos(np.clip((3 * np.cos(a) - 1) / 2, -1, 1))


def exact_graph(q, transforms, n_neighbors=16, n_random=4, seed=0):
    edges = graph.build_graph(quaternion_features(q, transforms), n_neighbors, n_random, seed)
    d = geo.distance(q[edges.i], geo.multiply(transforms[edges.k], q[edges.j]))
    return edges, d


def right_rotation_error(q_true, q_est):
    """Errors after the best b in q_est ~ q_true b, and the same after a handedness flip."""
    best = None
    for flip in (False, True):
        qt = alignment.handedness_flip(q_true) if flip else q_true
        u = geo.multiply(geo.conjugate(qt), q_est)            # = b for every particle
        b = np.linalg.eigh(u.T @ u)[1][:, -1]                 # sign-free average
        err = geo.distance(geo.multiply(qt, b), q_est)
        if best is None or np.median(err) < np.median(best):
            best = err
    return best


@pytest.fixture(scope="module")
def truth():
    return geo.uniform_quaternions(N_PARTICLES, seed=3)


def test_image_transforms_form_the_d4_group():
    t, names = graph.image_transforms()
    assert t.shape == (8, 4) and len(names) == 8
    np.testing.assert_allclose(t[0], [1, 0, 0, 0])
    assert np.allclose(np.abs(t[4] @ geo.MIRROR_QUATERNION), 1)
    table = graph.transform_table(t)                            # raises if not closed
    assert sorted(table[3]) == list(range(8))
    with pytest.raises(ValueError):
        graph.transform_table(graph.image_transforms(4)[0][[0, 1]])


def test_build_graph_matches_brute_force():
    rng = np.random.default_rng(0)
    K, N, F, nn = 3, 70, 5, 6
    feats = geo.normalize(rng.standard_normal((K, N, F)))
    edges = graph.build_graph(feats, n_neighbors=nn, n_random=2, seed=1, chunk_size=16)
    ang = np.arccos(np.clip(np.einsum("if,kjf->ikj", feats[0], feats), -1, 1))  # (N, K, N)
    ang[np.arange(N), :, np.arange(N)] = np.inf                                  # no self
    flat = ang.reshape(N, K * N)
    nb = ~edges.is_random
    for i in range(N):
        sel = nb & (edges.i == i)
        expected = set(np.argsort(flat[i])[:nn])
        assert set(edges.k[sel] * N + edges.j[sel]) == expected
    np.testing.assert_allclose(edges.d_hat, ang[edges.i, edges.k, edges.j], atol=1e-5)
    assert np.all(edges.i != edges.j)
    assert edges.is_random.sum() == 2 * N


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    N, E = 12, 50
    q = geo.normalize(rng.standard_normal((N, 4)))
    t, _ = graph.image_transforms()
    i, k = rng.integers(0, N, E), rng.integers(0, 8, E)
    j = (i + 1 + rng.integers(0, N - 1, E)) % N         # no self edges: d = 0 is a cone
    d_hat, w = rng.uniform(0, 3, E), rng.uniform(0.5, 1, E)
    for loss in ("l2", "huber", "cauchy"):
        _, grad, _ = recovery.orientation_loss(q, i, j, k, t, d_hat, w, loss, with_gradient=True)
        grad -= np.sum(grad * q, axis=1, keepdims=True) * q
        num = np.zeros_like(q)
        for a in range(N):
            for b in range(4):
                dq = np.zeros_like(q)
                dq[a, b] = 1e-6
                up, down = (recovery.orientation_loss(geo.normalize(q + sign * dq), i, j, k, t,
                                                      d_hat, w, loss) for sign in (1, -1))
                num[a, b] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, num, atol=1e-6)


def test_exact_identity_edges_recover_up_to_o4(truth):
    identity = graph.image_transforms(1, mirror=False)[0]
    # Identity edges alone need many far pairs to avoid folded minima (the paper used
    # the full distance matrix).
    edges, d = exact_graph(truth, identity, n_random=48)
    q, info = recovery.recover_orientations(edges.i, edges.j, d_hat=d, n_particles=len(truth),
                                       n_steps=600)
    _, q_al = alignment.align_o4(truth, q)
    assert np.median(alignment.orientation_errors(truth, q_al)) < 0.01
    assert info["loss"] < 1e-6
    assert info["residual"].shape == (len(truth),)


def test_noisy_distances_median_error(truth):
    identity = graph.image_transforms(1, mirror=False)[0]
    edges, d = exact_graph(truth, identity, n_neighbors=24, n_random=48)
    noisy = np.clip(d + 0.2 * np.random.default_rng(7).standard_normal(len(d)), 0, np.pi)
    q, _ = recovery.recover_orientations(edges.i, edges.j, d_hat=noisy, n_particles=len(truth),
                                    n_steps=600)
    _, q_al = alignment.align_o4(truth, q)
    assert np.median(alignment.orientation_errors(truth, q_al)) < 0.12   # paper Fig. 5: ~0.1


def test_transform_edges_need_no_ground_truth(truth):
    """With transformed edges only a global object rotation (+ handedness) remains."""
    t, _ = graph.image_transforms()
    feats = quaternion_features(truth, t)
    q, info = recovery.recover_from_features(feats, t, n_neighbors=16, n_random=4,
                                        distance_map=feature_angle_to_distance,
                                        weighting="uniform", n_steps=600)
    # Our own check: solve b in q_est ~ q_true b (and after a handedness flip).
    assert np.median(right_rotation_error(truth, q)) < 0.02
    info_al, q_al = alignment.align_rotation_handedness(truth, q)
    assert np.median(alignment.orientation_errors(truth, q_al)) < 0.02
    # Edges with g != 1 rule out the detector-side rotation: without them the same check fails.
    assert info["ambiguity"]["loss"] < info["ambiguity"]["loss_identity"]


def test_identity_edges_alone_leave_the_harmful_ambiguity(truth):
    """Control for the previous test: O(4) fits, the rotation-only alignment does not."""
    identity = graph.image_transforms(1, mirror=False)[0]
    edges, d = exact_graph(truth, identity)
    a = geo.normalize(np.array([0.9, 0.3, -0.2, 0.25]))       # detector-side factor
    q_bad = geo.multiply(a, geo.conjugate(truth))
    assert np.allclose(geo.distance(q_bad[edges.i], q_bad[edges.j]), d, atol=1e-9)
    assert np.median(right_rotation_error(truth, q_bad)) > 0.3


def test_resolve_ambiguity_removes_detector_rotation_and_conjugation(truth):
    t, _ = graph.image_transforms()
    edges, d = exact_graph(truth, t)
    a = geo.normalize(np.array([0.2, -0.7, 0.4, 0.5]))
    b = geo.normalize(np.array([0.5, 0.1, 0.8, -0.3]))
    q_o4 = geo.multiply(geo.multiply(a, geo.conjugate(truth)), b)
    q_fixed, info = spectral.resolve_ambiguity(q_o4, edges.i, edges.j, edges.k, t, d, seed=0)
    assert info["conjugated"]
    assert np.median(right_rotation_error(truth, q_fixed)) < 0.05


def test_same_seed_same_result(truth):
    t, _ = graph.image_transforms()
    edges, d = exact_graph(truth[:300], t, n_neighbors=8, n_random=2)
    noisy = np.clip(d + 0.1 * np.random.default_rng(0).standard_normal(len(d)), 0, np.pi)
    runs = [recovery.recover_orientations(edges.i, edges.j, d_hat=noisy, n_particles=300, k=edges.k,
                                     transforms=t, n_steps=30, init="random", restarts=2,
                                     restart_steps=10, seed=s)[0] for s in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_edge_weights_trust_small_distances():
    d = np.linspace(0, np.pi, 50)
    for scheme in ("gaussian", "inverse"):
        w = graph.edge_weights(d, scheme)
        assert np.all(np.diff(w) <= 0) and w[0] == pytest.approx(1) and w[-1] > 0
    assert np.all(graph.edge_weights(d, "uniform") == 1)


# ----------------------------------------------------------------------------- scale

def learned_like_features(q, transforms, n_features=32, noise=0.05, seed=0):
    """Features ``(K, N, F)`` on a curved 3-D manifold: a random nonlinear map of
    ``quaternion_features`` plus isotropic noise (closer to a network's embedding)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((16, 48))
    B = rng.standard_normal((48, n_features)) / np.sqrt(48)
    f = np.tanh(quaternion_features(q, transforms) @ A) @ B
    return f + noise * rng.standard_normal(f.shape)


def neighbour_keys(edges, K):
    """Set of ``(i, k, j)`` of the feature-space neighbour edges, as integers."""
    nb = ~edges.is_random
    N = edges.n_particles
    return (edges.i[nb] * K + edges.k[nb]) * N + edges.j[nb]


def test_ivf_search_recall_against_brute_force():
    t, _ = graph.image_transforms()
    N = 2500
    q = geo.uniform_quaternions(N, seed=11)
    feats = learned_like_features(q, t)
    exact = graph.build_graph(feats, n_neighbors=12, n_random=3, seed=4, method="exact")
    approx = graph.build_graph(feats, n_neighbors=12, n_random=3, seed=4, method="ivf")
    assert exact.search == "exact" and approx.search == "ivf"
    keys_exact, keys_approx = neighbour_keys(exact, 8), neighbour_keys(approx, 8)
    recall = np.isin(keys_approx, keys_exact).mean()
    assert recall >= 0.95, recall
    # Same layout: 12 neighbours per particle, no self pairs, and the same random pairs.
    assert np.all(np.bincount(approx.i[~approx.is_random], minlength=N) == 12)
    assert np.all(approx.i != approx.j)
    assert len(np.unique(keys_approx)) == len(keys_approx)
    for name in ("i", "j", "k", "d_hat"):
        np.testing.assert_array_equal(getattr(approx, name)[approx.is_random],
                                      getattr(exact, name)[exact.is_random])
    # Estimated distances are the true feature angles of the edges found.
    u = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    ang = np.arccos(np.clip(np.einsum("ef,ef->e", u[0, approx.i], u[approx.k, approx.j]),
                            -1, 1))
    np.testing.assert_allclose(approx.d_hat, ang, atol=1e-5)
    # Fewer probed cells find fewer true neighbours; probing all cells is exact.
    few = graph.build_graph(feats, n_neighbors=12, n_random=3, seed=4, method="ivf",
                          n_cells=64, n_probe=1)
    all_cells = graph.build_graph(feats, n_neighbors=12, n_random=3, seed=4, method="ivf",
                                n_cells=16, n_probe=16)
    assert np.isin(neighbour_keys(few, 8), keys_exact).mean() < recall
    assert set(neighbour_keys(all_cells, 8)) == set(keys_exact)


def test_ivf_handles_tiny_inputs_and_chooses_by_size(monkeypatch):
    rng = np.random.default_rng(2)
    feats = geo.normalize(rng.standard_normal((2, 30, 6)))
    # Cells smaller than n_neighbors and n_neighbors close to all candidates: exact fill.
    g = graph.build_graph(feats, n_neighbors=50, n_random=1, method="ivf", n_cells=20)
    ex = graph.build_graph(feats, n_neighbors=50, n_random=1, method="exact")
    assert set(neighbour_keys(g, 2)) == set(neighbour_keys(ex, 2))
    assert graph.build_graph(feats, 4, 1).search == "exact"
    monkeypatch.setattr(graph, "EXACT_SEARCH_LIMIT", 100)
    assert graph.build_graph(feats, 4, 1).search == "ivf"
    with pytest.raises(ValueError):
        graph.build_graph(feats, 4, 1, method="kd")


def test_spherical_kmeans_is_seeded_and_unit():
    x = geo.normalize(np.random.default_rng(0).standard_normal((3000, 5)))
    a = graph.spherical_kmeans(x, 40, seed=1)
    b = graph.spherical_kmeans(x, 40, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_equivariant_plane_only_for_the_dihedral_transforms():
    assert spectral.equivariant_plane(graph.image_transforms()[0]).shape == (8, 2, 2)
    assert spectral.equivariant_plane(graph.image_transforms(2)[0]) is None        # D2: reducible
    assert spectral.equivariant_plane(graph.image_transforms(4, mirror=False)[0]) is None
    assert spectral.equivariant_plane(graph.image_transforms(1, mirror=True)[0]) is None
    assert spectral.equivariant_plane(graph.image_transforms(1, mirror=False)[0]) is None


def test_equivariant_spectral_start_needs_no_ambiguity_resolution(truth):
    """The 2N-dimensional start is already right up to object rotation + handedness,
    and agrees with the K N virtual-graph start after its O(4) alignment."""
    t, _ = graph.image_transforms()
    edges, d = exact_graph(truth, t)
    noisy = np.clip(d + 0.1 * np.random.default_rng(3).standard_normal(len(d)), 0, np.pi)
    q_eq = spectral.spectral_initialization(edges.i, edges.j, edges.k, t, noisy, len(truth))
    assert np.median(right_rotation_error(truth, q_eq)) < 0.25
    q_virtual = spectral.spectral_initialization(edges.i, edges.j, edges.k, t, noisy, len(truth),
                                            method="virtual")
    assert np.median(right_rotation_error(truth, q_virtual)) > 0.3      # O(4)-ambiguous
    _, q_al = alignment.align_o4(truth, q_virtual)
    assert np.median(alignment.orientation_errors(truth, q_al)) < 0.25
    with pytest.raises(ValueError):
        spectral.spectral_initialization(edges.i, edges.j, edges.k * 0, t[:1], noisy,
                                    len(truth), method="equivariant")


def test_recovery_with_approximate_graph(truth):
    """End to end through the inverted file: the same accuracy as the exact search."""
    t, _ = graph.image_transforms()
    feats = quaternion_features(truth, t)
    q, info = recovery.recover_from_features(feats, t, distance_map=feature_angle_to_distance,
                                        weighting="uniform", n_steps=300, search="ivf")
    assert info["graph"].search == "ivf"
    assert info["init"] == "spectral (equivariant)"
    assert np.median(right_rotation_error(truth, q)) < 0.02
    assert info["seconds_init"] > 0 and info["seconds_optimize"] > 0
