"""Tests of orientlearn.core.network / training / model_io: the learned distance d_hat
(paper eq. 3).

Small synthetic data made here (a real-space projector of an asymmetric blob volume),
tiny networks, CPU only.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from scipy import ndimage

from orientlearn.core import geometry, graph, image_ops, model_io, network, training
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def blob_volume(size=24, seed=3):
    """An asymmetric volume ``vol[z, y, x]``: a few Gaussian blobs of different sizes
    and weights, kept inside a sphere so every projection fits the box."""
    rng = np.random.default_rng(seed)
    c = size // 2
    z, y, x = np.mgrid[:size, :size, :size] - c
    vol = np.zeros((size,) * 3)
    for _ in range(6):
        centre = rng.uniform(-0.28, 0.28, 3) * size
        width = rng.uniform(0.06, 0.12) * size
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
            / (2 * width ** 2))
    # Zero outside a sphere clear of the box faces (for even sizes the box is not
    # symmetric about the centre: index 0 has no mirror partner).
    return vol * (z ** 2 + y ** 2 + x ** 2 <= (c - 2) ** 2)


def project(vol, quats):
    """Real-space projector with the geometry.py convention:
    ``p(x, y) = sum_z V(R^T (x, y, z))``, ``vol[z, y, x]``, ``img[y, x]``, centre ``N // 2``."""
    n = vol.shape[0]
    c = n // 2
    y, x = np.mgrid[:n, :n] - c
    out = np.empty((len(quats), n, n))
    for i, R in enumerate(geometry.quaternion_to_matrix(quats)):
        pts = np.stack(np.broadcast_arrays(x[None], y[None], (np.arange(n) - c)[:, None, None]), -1)
        src = pts @ R            # rows R^T r: (x, y, z) in the volume frame
        coords = [src[..., 2] + c, src[..., 1] + c, src[..., 0] + c]
        out[i] = ndimage.map_coordinates(vol, coords, order=1, mode="constant").sum(0)
    return out


@pytest.fixture(scope="module")
def volume():
    return blob_volume()


@pytest.mark.parametrize("size", [15, 16])
def test_image_transforms_match_quaternion_convention(size):
    """transform_images (mirror, then k quarter turns) of a projection equals the
    projection of the transformed quaternion (transform_quaternion), for odd and even box
    sizes, with the same transforms recovery uses (graph.image_transforms)."""
    vol = blob_volume(size, seed=5)
    q = geometry.uniform_quaternions(3, seed=1)
    p = project(vol, q)
    scale = np.abs(p).max()
    transforms = graph.image_transforms(4, mirror=True)[0]
    for k in range(4):
        for m in (False, True):
            img = image_ops.transform_images(p, k, m)
            ref = project(vol, image_ops.transform_quaternion(q, k, m))
            assert np.abs(img - ref).max() < 1e-6 * scale, (k, m)
            g = image_ops.image_transform_quaternion(k, m)
            assert np.allclose(np.abs(transforms[k + 4 * m] @ g), 1.0)      # same transform
            # the general image transform agrees (exact for quarter turns)
            np.testing.assert_allclose(image_ops.apply_image_transform(p, g), img,
                                       atol=1e-5 * scale)
    for k in range(4):                      # the general rotation turns the same way
        np.testing.assert_allclose(image_ops.rotate_quarter_turns(p, k),
                                   image_ops.rotate_images(p, k * np.pi / 2), atol=1e-5 * scale)
    # vectorised over k and mirror
    ks, ms = np.array([0, 1, 2, 3]), np.array([True, False, True, False])
    np.testing.assert_allclose(
        image_ops.transform_quaternion(np.repeat(q[:1], 4, 0), ks, ms),
        [image_ops.transform_quaternion(q[0], k, m) for k, m in zip(ks, ms)], atol=1e-12)
    # The opposite sense would fail: a quarter turn is not its own inverse.
    wrong = project(vol, geometry.multiply(geometry.in_plane_quaternion(-np.pi / 2), q))
    assert np.abs(image_ops.rotate_quarter_turns(p, 1) - wrong).max() > 0.1 * scale


def test_preprocess_standardises():
    rng = np.random.default_rng(0)
    imgs = rng.normal(3.0, 5.0, (4, 10, 10))
    imgs[3] = 7.0                                           # a constant image
    x = network.preprocess_images(imgs)
    assert x.shape == (4, 10, 10, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[:3].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x[:3].std(axis=(1, 2, 3)), 1, atol=1e-5)
    assert np.all(x[3] == 0)


def test_feature_distance_range_and_matrix():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((20, 8))
    d = network.feature_distance(f[:, None], f[None], "angle")
    assert d.shape == (20, 20)
    assert np.all(d >= 0) and np.all(d <= np.pi)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-6)
    np.testing.assert_allclose(network.feature_distance(f, -f, "angle"), np.pi, atol=1e-6)
    np.testing.assert_allclose(network.distance_matrix(f, "angle"), d, atol=1e-5)
    import tensorflow as tf
    fa, fb = tf.constant(f[:5], tf.float32), tf.constant(f[5:10], tf.float32)
    for head in network.DISTANCE_HEADS:
        dtf = network.feature_distance_tf(fa, fb, head=head)
        np.testing.assert_allclose(dtf.numpy(), network.feature_distance(f[:5], f[5:10], head),
                                   atol=2e-3)
    # The product default head is 'rotation' in every function that takes a head.
    assert network.DEFAULT_HEAD == "rotation" == network.DISTANCE_HEADS[0]
    np.testing.assert_array_equal(network.feature_distance(f[:5], f[5:10]),
                                  network.feature_distance(f[:5], f[5:10], "rotation"))
    np.testing.assert_array_equal(network.distance_matrix(f),
                                  network.distance_matrix(f, "rotation"))
    np.testing.assert_array_equal(network.angle_to_distance(1.0),
                                  network.angle_to_distance(1.0, "rotation"))
    import inspect
    for fn in (network.cosine_to_distance, network.angle_to_distance, network.feature_distance,
               network.feature_distance_tf, network.distance_matrix, network.estimate_distances,
               training._pair_loss_tf, training.train_distance_model):
        assert inspect.signature(fn).parameters["head"].default == "rotation", fn.__name__


def test_rotation_head_is_exact_on_rotation_matrix_features():
    """Features vec(R) / sqrt(3) have cosine tr(R_i^T R_j) / 3 = (1 + 2 cos d_q) / 3: the
    'rotation' head turns them into d_q exactly (no plateau); the 'angle' head cannot."""
    q = geometry.uniform_quaternions(300, seed=4)
    f = geometry.quaternion_to_matrix(q).reshape(-1, 9) / np.sqrt(3)
    d_true = geometry.distance(q[:, None], q[None])
    d_rot = network.distance_matrix(f, head="rotation")
    np.testing.assert_allclose(d_rot, d_true, atol=2e-3)
    assert np.abs(network.distance_matrix(f, head="angle") - d_true).max() > 0.5
    c = np.array([1.0, 1 / 3, -1 / 3, -0.9])
    np.testing.assert_allclose(network.cosine_to_distance(c, "rotation"),
                               [0, np.pi / 2, np.pi, np.pi])
    np.testing.assert_allclose(network.angle_to_distance(np.arccos(c), "angle"), np.arccos(c))
    import tensorflow as tf
    a, b = tf.constant(f[:50], tf.float32), tf.constant(f[50:100], tf.float32)
    np.testing.assert_allclose(network.feature_distance_tf(a, b, head="rotation").numpy(),
                               network.feature_distance(f[:50], f[50:100], "rotation"), atol=3e-3)
    with pytest.raises(ValueError):
        network.cosine_to_distance(c, "euclid")


@pytest.mark.parametrize("sym", ["C1", "D2", "C3"])
def test_symmetric_distance_tf_matches_geometry(sym):
    import tensorflow as tf
    q = geometry.uniform_quaternions(12, seed=2)
    g = geometry.symmetry_group(sym)
    ref = geometry.symmetric_distance(q[:, None], q[None], g)
    got = training.symmetric_distance_tf(tf.constant(q), tf.constant(q), tf.constant(g)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("architecture", ["resnet", "paper"])
def test_network_any_size_and_distances(architecture):
    model = network.build_embedding_network(architecture, n_features=16, width=8, seed=0)
    rng = np.random.default_rng(0)
    for size in (32, 45):
        imgs = rng.standard_normal((5, size, size))
        f = network.embed(model, imgs, batch_size=2)
        assert f.shape == (5, 16) and f.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
        d = network.estimate_distances(model, imgs, imgs[::-1])
        assert np.all(d >= 0) and np.all(d <= np.pi)
        assert d[2] < 1e-3                                  # the same image in the middle
        assert d[0] > 1e-3                                  # different images
        np.testing.assert_allclose(network.estimate_distances(model, imgs, imgs), 0, atol=1e-3)


def test_resnet_shift_invariance_by_total_stride():
    """'resnet' is bias-free with uncentred normalisation and 'same' zero padding, so a
    zero-background image whose object stays clear of the border gives equal features
    after a shift by a multiple of the total stride (16). A shift by 1 pixel does not.
    The box must hold the object plus the receptive field (radius ~77 px) around it:
    activations outside the box are lost, so the box here is large."""
    model = network.build_embedding_network("resnet", n_features=16, width=8, seed=1)
    size, c = 256, 128
    y, x = np.mgrid[:size, :size] - c
    blob = np.exp(-((x - 3) ** 2 + y ** 2) / 18.0) + 0.7 * np.exp(-(x ** 2 + (y - 4) ** 2) / 8.0)
    shifted = [np.roll(blob, s, axis=(0, 1)) for s in [(0, 0), (16, 0), (-16, 32), (1, 0)]]
    # Object support (radius ~10) + receptive field (~77) stays inside for all shifts.
    raw = model.predict(np.stack(shifted)[..., None].astype(np.float32), verbose=0)
    scale = np.abs(raw[0]).max()
    assert scale > 0
    np.testing.assert_allclose(raw[1], raw[0], atol=1e-5 * scale)
    np.testing.assert_allclose(raw[2], raw[0], atol=1e-5 * scale)
    assert np.abs(raw[3] - raw[0]).max() > 1e-3 * scale


def _weighted_mse(d_hat, d, w):
    return float(np.sum(w * (d_hat - d) ** 2))


def test_loss_weights_sum_to_one_and_flatten_distribution():
    import tensorflow as tf
    q = geometry.uniform_quaternions(64, seed=4).astype(np.float32)
    feats = tf.constant(np.random.default_rng(0).standard_normal((64, 8)), tf.float32)
    g = tf.constant(geometry.symmetry_group("C1"), tf.float32)
    for weighting in ("density", "histogram"):
        loss, d_hat, d, w = (t.numpy() for t in training._pair_loss_tf(feats, tf.constant(q), g,
                                                                     weighting=weighting))
        assert len(d) == 64 * 63 // 2
        np.testing.assert_allclose(w.sum(), 1, rtol=1e-5)
        np.testing.assert_allclose(loss, _weighted_mse(d_hat, d, w), rtol=1e-4)
        # Unweighted, half of random pairs lie above ~2.0 rad; weighted, the mean
        # distance moves towards the uniform distribution's pi / 2.
        assert abs(np.sum(w * d) - np.pi / 2) < abs(d.mean() - np.pi / 2)


@pytest.fixture(scope="module")
def projections(volume):
    q = geometry.uniform_quaternions(400, seed=7)
    return project(volume, q).astype(np.float32), q


@pytest.mark.parametrize("head", ["angle", "rotation"])
def test_training_beats_constant_predictor(projections, head):
    imgs, q = projections
    model, hist = training.train_distance_model(
        imgs, q, architecture="resnet", n_features=16, width=8, epochs=4, batch_size=32,
        steps_per_epoch=50, learning_rate=3e-3, patience=None, seed=0, head=head)
    base = hist["val_constant_baseline"]
    assert np.isfinite(base) and base > 0
    assert min(hist["val_loss"]) < 0.6 * base, (hist["val_loss"], base)
    assert len(hist["loss"]) == 4 and all(p > 0 for p in hist["pairs_per_s"])
    # The model's own distances: an image vs its mirror is far, vs itself zero.
    d_self = network.estimate_distances(model, imgs[:20], imgs[:20], head=head)
    d_mirror = network.estimate_distances(model, imgs[:20], image_ops.mirror_images(imgs[:20]),
                                       head=head)
    assert d_self.max() < 1e-3
    assert np.median(d_mirror) > 1.0


class _Interrupt(Exception):
    pass


def test_resume_from_checkpoint(projections, tmp_path):
    imgs, q = projections[0][:120], projections[1][:120]
    kw = dict(architecture="resnet", n_features=8, width=4, epochs=4, batch_size=16,
              steps_per_epoch=5, patience=None, seed=3)
    ref_model, ref_hist = training.train_distance_model(imgs, q, **kw)

    def stop_after_two(epoch, n_epochs, logs):
        assert "loss" in logs and "pairs_per_s" in logs and str(logs)
        if epoch == 2:
            raise _Interrupt

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(_Interrupt):
        training.train_distance_model(imgs, q, checkpoint_dir=ckpt, progress=stop_after_two, **kw)
    epochs_seen = []
    model, hist = training.train_distance_model(
        imgs, q, checkpoint_dir=ckpt, progress=lambda e, n, logs: epochs_seen.append(e), **kw)
    assert epochs_seen == [3, 4]                            # continued, not restarted
    assert len(hist["loss"]) == 4
    np.testing.assert_allclose(hist["loss"][:2], ref_hist["loss"][:2], rtol=1e-4)
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-3)
    for a, b in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # A finished checkpoint trains no further.
    again, hist2 = training.train_distance_model(
        imgs, q, checkpoint_dir=ckpt, progress=lambda *a: pytest.fail("trained again"), **kw)
    assert len(hist2["loss"]) == 4


def test_several_sets_symmetry_and_augmentation(projections):
    imgs, q = projections
    aug = dict(noise_variance=(0.5, 2.0), max_shift=2)
    aug["ctf"] = training.ctf_augmentation(pixel_size=5.0)
    model, hist = training.train_distance_model(
        [imgs[:60], imgs[60:120]], [q[:60], q[60:120]], symmetry="C2", n_features=8,
        width=4, epochs=1, batch_size=16, steps_per_epoch=3, seed=0, augmentation=aug)
    assert len(hist["val_loss"]) == 1 and np.isfinite(hist["val_loss"][0])
    with pytest.raises(ValueError):
        training.train_distance_model([imgs[:60]], [q[:60], q[:60]], epochs=1)
    with pytest.raises(ValueError):
        training.train_distance_model(imgs, q, epochs=1, augmentation=dict(flip=True))


def test_augmented_batch_is_seeded_and_has_hard_pairs(projections):
    imgs, q = projections
    clean = network.preprocess_images(imgs)[..., 0]
    aug = dict(training.DEFAULT_AUGMENTATION, noise_variance=(1.0, 1.0))
    a = training._draw_batch(clean, q, np.arange(100), 32, aug, np.random.default_rng(5))
    b = training._draw_batch(clean, q, np.arange(100), 32, aug, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (32, 24, 24, 1)
    d = geometry.distance(a[1][:, None], a[1][None])[np.triu_indices(32, 1)]
    # Copies of the same particle under another rotation / mirror: d = pi/2 or pi exactly.
    assert np.sum(np.isclose(d, np.pi / 2, atol=1e-6) | np.isclose(d, np.pi, atol=1e-6)) >= 5


def test_save_load_round_trip_and_errors(tmp_path):
    model = network.build_embedding_network("resnet", n_features=8, width=4, seed=2)
    imgs = np.random.default_rng(0).standard_normal((6, 24, 24)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    meta = dict(image_size=24, pixel_size=3.667, architecture="resnet", symmetry="C1",
                training=dict(best_val_loss=np.float32(0.1)))
    _, meta_path = model_io.save_distance_model(model, path, meta)
    assert os.path.exists(meta_path) and meta_path.endswith("m.json")
    loaded, meta2 = model_io.load_distance_model(path)
    assert meta2["pixel_size"] == 3.667 and meta2["n_features"] == 8
    np.testing.assert_array_equal(network.embed(loaded, imgs), network.embed(model, imgs))
    with pytest.raises(FileNotFoundError):
        model_io.load_distance_model(str(tmp_path / "missing.keras"))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(open(path, "rb").read()[:300])          # truncated file
    with pytest.raises(ValueError, match="corrupt"):
        model_io.load_distance_model(str(bad))
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(ValueError):
        model_io.load_distance_model(str(junk))


def test_validation_indices_match_training_split():
    # The held-out particles reported for evaluation are those training never saw:
    # same permutation stream as train_distance_model's split.
    import numpy as np

    from orientlearn.core import model_io
    a = model_io.validation_indices([100, 40], 0.2, seed=3)
    assert [len(x) for x in a] == [20, 8]
    rng = np.random.default_rng([3, 1])
    assert np.array_equal(a[0], np.sort(rng.permutation(100)[:20]))
    assert np.array_equal(a[1], np.sort(rng.permutation(40)[:8]))
    assert not np.array_equal(a[0], model_io.validation_indices(100, 0.2, seed=4)[0])
    for (train, val), n in zip(model_io.train_validation_split([100, 40], 0.2, seed=3), [100, 40]):
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
