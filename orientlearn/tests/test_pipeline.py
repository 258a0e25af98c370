"""The pipeline layer (``core/pipeline.py``, ``core/model.py``): the calls protocols,
CLI, demo and benchmarks share. Core only: no Scipion import."""
import numpy as np
import pytest

from orientlearn.core import (
    alignment,
    ctf,
    fsc,
    geometry,
    image_ops,
    network,
    pipeline,
    reconstruction,
    simulation,
)
from orientlearn.core.source import ArraySource, MrcSource, StackWriter
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)   # scipion3 tests orientlearn.tests.test_pipeline

SIZE = 16


def _blob_volume(n=SIZE):
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for (cx, cy, cz), w in zip([(0, 0, 0), (3, 1, -2), (-2, 4, 1)], [1.0, 0.7, 0.5]):
        vol += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 4.0)
    return vol


def _oriented_stack(tmp_path, n=40):
    sim = simulation.simulate_particles(_blob_volume(), n, max_shift=2.0, ctf=True, sigma2=0.5,
                                     voxel_size=3.0, seed=4)
    path = str(tmp_path / "p.mrcs")
    with StackWriter(path, n, SIZE, sim["pixel_size"]) as w:
        for b in range(0, n, 7):
            w.write(b, sim["images"][b:b + 7])
    return sim, MrcSource(path, quaternions=sim["quaternions"], shifts=sim["shifts"],
                          ctf=sim["ctf"])


def test_streamed_half_maps_equal_whole_stack_reconstructions(tmp_path):
    """One pass in batches of 9 from disk == reconstruct_fourier on the arrays: each half
    on its particles, and the full map (sum of the halves' sums) on all of them."""
    sim, src = _oriented_stack(tmp_path)
    res = pipeline.reconstruct_halves(src, batch_size=9, mask_radius=6, seed=3)
    p = sim["ctf"]

    def ctfs_of(idx_all):
        return lambda i, size: ctf.ctf_2d_batch(
            size, sim["pixel_size"], p["defocus_u"][idx_all[i]], p["defocus_v"][idx_all[i]],
            p["astig_angle"][idx_all[i]], voltage=p["voltage"], cs=p["cs"],
            amplitude_contrast=p["amplitude_contrast"], phase_shift=p["phase_shift"])

    def direct(idx):
        return reconstruction.reconstruct_fourier(
            sim["images"][idx], sim["quaternions"][idx], shifts=sim["shifts"][idx],
            ctfs=ctfs_of(idx), mask_radius=6)

    assert sorted(np.bincount(res.half)) == [20, 20]
    for vol, idx in ((res.half1, np.flatnonzero(res.half == 0)),
                     (res.half2, np.flatnonzero(res.half == 1)),
                     (res.full, np.arange(len(src)))):
        ref = direct(idx)
        assert np.abs(vol - ref).max() < 1e-4 * np.abs(ref).max()
    # The halves differ (different particles) and the FSC is that of the two halves.
    assert np.abs(res.half1 - res.half2).max() > 0.05 * np.abs(res.full).max()
    _, f = fsc.fsc(res.half1, res.half2, src.pixel_size)
    np.testing.assert_allclose(res.fsc, f)
    # Same seed, same split.
    np.testing.assert_array_equal(pipeline.half_split(40, 3), res.half)


def test_reconstruct_needs_orientations():
    with pytest.raises(ValueError, match="no orientations"):
        pipeline.reconstruct_halves(ArraySource(np.zeros((4, 8, 8)), 1.0))


def test_bad_images_are_refused_with_their_position_or_id():
    images = np.random.default_rng(0).standard_normal((5, 8, 8)).astype(np.float32)
    images[3, 2, 2] = np.nan
    images[1] = 7.0
    src = ArraySource(images, 1.0, quaternions=geometry.uniform_quaternions(5))
    with pytest.raises(ValueError, match=r"0-based positions.*constant.*ids 1\b"):
        pipeline.reconstruct_halves(src, batch_size=2)
    src.ids = np.array([10, 11, 12, 13, 14])              # e.g. Scipion ids
    with pytest.raises(ValueError, match=r"NaN.*ids 13\b"):
        pipeline.reconstruct_halves(src.with_records(), batch_size=8)


def _rotation_features(q, transforms):
    """Exact features for the 'rotation' head: flattened R(g q) / sqrt(3), whose cosines
    are tr(R_i^T R_j) / 3."""
    gq = geometry.multiply(transforms[:, None, :], q[None, :, :])
    return geometry.quaternion_to_matrix(gq).reshape(len(transforms), len(q), 9)


def test_recovery_from_exact_features_is_accurate():
    """Exact distances through the product path (graph + recovery, product defaults):
    error < 0.05 rad after a global rotation and handedness."""
    q = geometry.uniform_quaternions(300, seed=5)
    transforms = pipeline.detector_transforms()
    feats = _rotation_features(q, transforms)
    res = pipeline.recover_from_embedding(feats, transforms,
                                          lambda a: network.angle_to_distance(a, "rotation"),
                                          seed=0, n_steps=400)
    cmp = alignment.compare_orientations(q, res.quaternions)
    assert cmp["rot_median"] < 0.05, cmp["rot_median"]
    assert np.nanmedian(res.residual) < 0.05


@pytest.fixture(scope="module")
def tiny_model():
    from orientlearn.core.model import DistanceModel
    net = network.build_embedding_network("resnet", n_features=8, width=4, seed=0)
    return DistanceModel(net, dict(image_size=SIZE, pixel_size=2.0, head="rotation"))


def test_model_prepares_particles_on_its_grid(tiny_model):
    images = np.random.default_rng(0).standard_normal((3, 24, 24)).astype(np.float32)
    # 24 px at 1 A/px: 24 A box -> 12 px at 2 A/px, zero-padded to the model's 16 px.
    out = tiny_model.prepare(images, 1.0)
    assert out.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(out, image_ops.crop_or_pad(image_ops.downsample(images, 12), SIZE))
    assert tiny_model.check_particles(24, 1.0) is not None       # 24 A vs 32 A
    assert tiny_model.check_particles(16, 2.0) is None


def test_embedding_is_one_traced_call_equal_to_per_transform_embedding(tiny_model):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((23, SIZE, SIZE)).astype(np.float32)
    src = ArraySource(images, 2.0)
    transforms = pipeline.detector_transforms()
    feats = pipeline.embed_particles(src, tiny_model, transforms, batch_size=10)
    assert feats.shape == (8, 23, 8)
    for k, g in enumerate(transforms):
        ref = network.embed(tiny_model.keras_model, image_ops.apply_image_transform(images, g))
        np.testing.assert_allclose(feats[k], ref, atol=1e-5)
    # Batches of 10, 10 and 3 particles (80, 80, 24 images): one trace.
    assert tiny_model._forward.experimental_get_tracing_count() == 1


def test_pair_distances_use_the_models_head(tiny_model):
    q = geometry.uniform_quaternions(12, seed=2)
    images = np.random.default_rng(2).standard_normal((12, SIZE, SIZE)).astype(np.float32)
    src = ArraySource(images, 2.0, quaternions=q)
    pairs = np.array([[0, 5], [3, 3], [11, 2]])
    d_true, d_est = pipeline.pair_distances(src, tiny_model, pairs=pairs)
    np.testing.assert_allclose(d_true, geometry.distance(q[pairs[:, 0]], q[pairs[:, 1]]))
    f = tiny_model.embed(images)[0]
    np.testing.assert_allclose(d_est, tiny_model.pair_distances(f[pairs[:, 0]], f[pairs[:, 1]]),
                               atol=1e-5)
    assert d_est[1] < 1e-3                                   # a particle with itself
