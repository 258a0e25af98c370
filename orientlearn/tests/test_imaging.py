"""Tests of the imaging model (eq. 1: volumes, projection, ctf, image_ops, simulation):
small synthetic volumes, a few seconds."""
import numpy as np
import pytest

from orientlearn.core import ctf, geometry, image_ops, projection, simulation, threads, volumes
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def _gaussians(n, centres, sigmas, amps=None):
    """Volume ``(n, n, n)`` [z, y, x] of 3-D Gaussians at ``centres`` (x, y, z) voxels
    relative to the box centre, and a function giving their exact projection for R."""
    amps = np.ones(len(sigmas)) if amps is None else amps
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = sum(a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
              for p, s, a in zip(centres, sigmas, amps))
    yy, xx = np.meshgrid(c, c, indexing="ij")

    def exact(R):
        # V(R^T r) is the Gaussian moved to R c; its z-integral is a 2-D Gaussian.
        img = np.zeros((n, n))
        for p, s, a in zip(centres, sigmas, amps):
            m = R @ p
            r2 = (xx - m[0]) ** 2 + (yy - m[1]) ** 2
            img += a * np.sqrt(2 * np.pi) * s * np.exp(-r2 / (2 * s * s))
        return img

    return vol.astype(np.float32), exact


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(7)
    n = 40
    vol, exact = _gaussians(n, rng.uniform(-5, 5, (5, 3)), rng.uniform(1.5, 2.5, 5),
                            rng.uniform(0.5, 1.5, 5))
    return vol, exact, projection.prepare_volume(vol)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ------------------------------------------------------------------------------ projector

def test_project_matches_analytic_gaussians(blobs):
    vol, exact, spec = blobs
    q = geometry.uniform_quaternions(6, seed=3)
    # a pole-crossing and an in-plane-only rotation on top of random ones
    q = np.concatenate([q, geometry.axis_angle_quaternion([1, 1, 0], 2.5)[None],
                        geometry.in_plane_quaternion(0.9)[None]])
    imgs = projection.project(spec, q)
    R = geometry.quaternion_to_matrix(q)
    assert imgs.shape == (8, 40, 40) and imgs.dtype == np.float32
    errors = [_rel(imgs[i], exact(R[i])) for i in range(len(q))]
    assert max(errors) < 0.015, errors


def test_project_accepts_matrices_and_volume(blobs):
    vol, exact, spec = blobs
    q = geometry.uniform_quaternions(3, seed=4)
    a = projection.project(spec, q)
    b = projection.project(vol, geometry.quaternion_to_matrix(q), batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())


def test_precompensation_interleaving_oversampling_reduce_error():
    # Gaussians filling most of the box: the hard case for Fourier interpolation; an
    # axis-aligned view is the worst for the periodic copies of the volume.
    rng = np.random.default_rng(1)
    vol, exact = _gaussians(32, rng.uniform(-7, 7, (4, 3)), rng.uniform(2, 3, 4))
    q = np.concatenate([[[1.0, 0, 0, 0]], geometry.uniform_quaternions(3, seed=2)])
    R = geometry.quaternion_to_matrix(q)

    def err(os_, pre, il):
        spec = projection.prepare_volume(vol, os_, precompensate=pre, interleave=il)
        imgs = projection.project(spec, q)
        return max(_rel(imgs[i], exact(R[i])) for i in range(len(q)))

    e_default = err(2, True, True)
    assert e_default < 0.015
    assert e_default < 0.5 * err(2, True, False)
    assert err(2, True, False) < err(2, False, False)
    assert err(3, True, True) < e_default


def test_project_matches_real_space_reference():
    # smooth random volume inside the inscribed sphere (the reference only sums the box)
    n = 24
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter
    vol = gaussian_filter(rng.standard_normal((n, n, n)), 2.0)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol *= np.clip((9.0 - np.sqrt(x ** 2 + y ** 2 + z ** 2)) / 2.0, 0, 1)
    q = geometry.uniform_quaternions(3, seed=11)
    imgs = projection.project(vol, q, oversampling=3)
    for i in range(3):
        ref = projection.real_space_project(vol, q[i])
        assert _rel(imgs[i], ref) < 0.03


def test_identity_projection_is_sum_along_z(blobs):
    vol, _, spec = blobs
    img = projection.project(spec, np.eye(3)[None])[0]
    assert _rel(img, vol.sum(axis=0)) < 0.005


def test_object_outside_inscribed_sphere_does_not_wrap():
    # a blob near a corner rotates to the box edge (y = +15.6): it must stay there, not
    # wrap around to the opposite edge (which forcing a box-sized 2-D grid would do)
    vol, exact = _gaussians(32, [(11.0, 11.0, 4.0)], [1.5])
    R = geometry.quaternion_to_matrix(geometry.in_plane_quaternion(np.pi / 4))
    peak = exact(np.eye(3)).max()
    img = projection.project(vol, R[None])[0]
    assert np.abs(img[:16]).max() < 0.02 * peak
    np.testing.assert_allclose(img, exact(R), atol=0.02 * peak)
    wrapped = projection.project(vol, R[None], image_padding=1.0)[0]
    assert np.abs(wrapped[:16]).max() > 0.5 * peak


def test_as_rotation_matrices_accepts_matrices_and_quaternions():
    q = geometry.uniform_quaternions(5, seed=2)
    R = geometry.quaternion_to_matrix(q)
    np.testing.assert_allclose(geometry.as_rotation_matrices(q), R, atol=1e-12)
    np.testing.assert_array_equal(geometry.as_rotation_matrices(R), R)
    assert geometry.as_rotation_matrices(q[0]).shape == (1, 3, 3)
    with pytest.raises(ValueError, match="rotations must be"):
        geometry.as_rotation_matrices(np.zeros((5, 3)))


def test_astra_vectors_match_convention():
    # ASTRA pixel (row i, col j) must lie on our line R^T (j - c, i - c, t).
    n = 10
    R = geometry.quaternion_to_matrix(geometry.uniform_quaternions(4, seed=5))
    vec = projection.astra_vectors(R, n)
    ray, d, u, v = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
    for k in range(4):
        for i, j in [(0, 0), (3, 7), (n // 2, n // 2)]:
            astra_pt = d[k] + (j - (n - 1) / 2) * u[k] + (i - (n - 1) / 2) * v[k]
            ours = R[k].T @ np.array([j - n // 2, i - n // 2, 0.0])
            diff = astra_pt - ours
            # equal up to a move along the ray
            np.testing.assert_allclose(diff - (diff @ ray[k]) * ray[k], 0, atol=1e-12)


@pytest.mark.skipif(not projection.has_cuda(), reason="ASTRA CUDA device not available")
def test_project_astra_matches_project(blobs):
    vol, exact, spec = blobs
    q = geometry.uniform_quaternions(5, seed=8)
    a = projection.project_astra(vol, q)
    b = projection.project(spec, q)
    for i in range(5):
        assert _rel(a[i], b[i]) < 0.05


# ------------------------------------------------------------------ image-side transforms

def test_rotate_images_equals_projection_of_rotated_orientation(blobs):
    _, _, spec = blobs
    q = geometry.uniform_quaternions(3, seed=9)
    imgs = projection.project(spec, q)
    for alpha, tol in [(np.pi / 2, 1e-5), (np.pi, 1e-5), (-np.pi / 2, 1e-5), (0.7, 0.02)]:
        expected = projection.project(
            spec, geometry.multiply(geometry.in_plane_quaternion(alpha), q))
        got = image_ops.rotate_images(imgs, alpha)
        assert np.abs(got - expected).max() < tol * np.abs(expected).max(), alpha
    # per-image angles
    alphas = np.array([0.3, np.pi / 2, -1.1])
    expected = projection.project(spec, geometry.multiply(geometry.in_plane_quaternion(alphas), q))
    assert _rel(image_ops.rotate_images(imgs, alphas), expected) < 0.02


@pytest.mark.parametrize("n", [16, 17])
def test_mirror_images_equals_projection_of_mirrored_orientation(n):
    vol, _ = _gaussians(n, [(2.0, -3.0, 1.0), (-2.0, 1.0, 0.0)], [1.5, 2.0])
    q = geometry.uniform_quaternions(3, seed=1)
    expected = projection.project(vol, geometry.multiply(geometry.MIRROR_QUATERNION, q))
    got = image_ops.mirror_images(projection.project(vol, q))
    rows = slice(1 - n % 2, None)   # for even n, row 0 mirrors to row n, outside the box
    assert np.abs(got - expected)[:, rows].max() < 1e-5 * np.abs(expected).max()
    np.testing.assert_array_equal(image_ops.mirror_images(image_ops.mirror_images(got)), got)


def test_apply_image_transform_matches_projection():
    from orientlearn.core import graph
    vol, _ = _gaussians(17, [(2.0, -3.0, 1.0), (-2.0, 1.0, 0.0)], [1.5, 2.0])
    spec = projection.prepare_volume(vol)
    q = geometry.uniform_quaternions(2, seed=4)
    imgs = projection.project(spec, q)
    transforms, _ = graph.image_transforms(n_rotations=4, mirror=True)
    for g in transforms:
        expected = projection.project(spec, geometry.multiply(g, q))
        got = image_ops.apply_image_transform(imgs, g)
        assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()
    with pytest.raises(ValueError):
        image_ops.apply_image_transform(imgs, geometry.axis_angle_quaternion([1, 0, 0], 0.3))


@pytest.mark.parametrize("n, size", [(16, 10), (16, 21), (15, 8), (15, 20)])
def test_crop_or_pad_keeps_centre(n, size):
    img = np.zeros((2, n, n), np.float32)
    img[:, n // 2, n // 2] = 1.0
    out = image_ops.crop_or_pad(img, size)
    assert out.shape == (2, size, size) and out[0, size // 2, size // 2] == 1.0
    np.testing.assert_array_equal(image_ops.crop_or_pad(image_ops.crop_or_pad(img, n + 6), n), img)
    vol = np.zeros((n, n, n), np.float32)
    vol[n // 2, n // 2, n // 2] = 1.0
    assert volumes.crop_or_pad_volume(vol, size)[size // 2, size // 2, size // 2] == 1.0


# ------------------------------------------------------------------------------- shifts

def _centroid(imgs):
    n = imgs.shape[-1]
    c = np.arange(n) - n // 2
    w = imgs.sum(axis=(-2, -1))
    return np.stack([(imgs * c[None, :]).sum(axis=(-2, -1)) / w,
                     (imgs * c[:, None]).sum(axis=(-2, -1)) / w], axis=-1)


def test_shift_moves_centroid_by_t():
    n = 48
    c = np.arange(n) - n // 2
    img = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    t = np.array([[3.3, -2.1], [0.5, 6.0], [-7.25, 0.0]])
    out = image_ops.shift_images(np.repeat(img[None], 3, 0), t)
    np.testing.assert_allclose(_centroid(out), t, atol=1e-3)


def test_shift_has_no_wraparound():
    n = 32
    img = np.zeros((n, n), np.float32)
    img[10:14, n - 4:n - 1] = 1.0                 # a block near the right edge
    out = image_ops.shift_images(img[None], [[6.0, 0.0]])[0]
    assert np.abs(out[:, : n // 2]).max() < 1e-4  # nothing re-enters on the left
    assert np.abs(out).sum() < 0.5 * img.sum()    # most of it left the box


def test_sample_shifts_triangular_and_seeded():
    s = simulation.sample_shifts(20000, 5.0, seed=1)
    assert s.shape == (20000, 2) and np.abs(s).max() <= 5.0
    assert abs(s.mean()) < 0.05
    np.testing.assert_allclose(s.var(), 25.0 / 6.0, rtol=0.05)    # var of Tri(-a, 0, a)
    np.testing.assert_array_equal(s, simulation.sample_shifts(20000, 5.0, seed=1))


# ---------------------------------------------------------------------------------- CTF

def test_ctf_zero_frequency_and_first_zero():
    size, pix, df = 256, 1.0, 20000.0
    ctf_image = ctf.ctf_2d(size, pix, df, df, 0.0, voltage=300, cs=0.0, amplitude_contrast=0.0)
    assert ctf_image.shape == (size, size)
    lam = ctf.electron_wavelength(300)
    np.testing.assert_allclose(lam, 0.019687, atol=1e-5)
    # cs = 0, A = 0: CTF = sin(pi lambda df k^2), first zero at k = 1 / sqrt(lambda df)
    k0 = 1.0 / np.sqrt(lam * df)
    f = np.fft.fftfreq(size, d=pix)
    row = ctf_image[0]                                  # ky = 0, along kx
    first_neg = np.argmax(row[1: size // 2] < 0) + 1
    assert f[first_neg - 1] <= k0 <= f[first_neg]
    assert np.all(row[1:first_neg] > 0)           # positive first lobe (underfocus)
    # isotropic: the same along ky
    np.testing.assert_allclose(ctf_image[:, 0], row, atol=1e-6)
    # with amplitude contrast, CTF(0) = A
    ctf_a = ctf.ctf_2d(size, pix, df, df, 0.0, amplitude_contrast=0.1)
    np.testing.assert_allclose(ctf_a[0, 0], 0.1, atol=1e-6)


def test_ctf_astigmatism_direction():
    size, pix = 128, 1.5
    # defocus_u along y (angle pi/2): zeros come at lower k along y than along x
    ctf_image = ctf.ctf_2d(size, pix, 25000.0, 15000.0, np.pi / 2, cs=0.0, amplitude_contrast=0.0)
    first_x = np.argmax(ctf_image[0, 1:] < 0) + 1
    first_y = np.argmax(ctf_image[1:, 0] < 0) + 1
    assert first_y < first_x
    batch = ctf.ctf_2d_batch(size, pix, [25000.0, 15000.0], [15000.0, 15000.0],
                                 [np.pi / 2, 0.0], cs=0.0, amplitude_contrast=0.0)
    np.testing.assert_allclose(batch[0], ctf_image)
    assert batch.shape == (2, size, size)


def test_apply_ctf_identity_and_flip():
    img = np.random.default_rng(0).standard_normal((2, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(ctf.apply_ctf(img, np.ones((16, 16))), img, atol=1e-5)
    np.testing.assert_allclose(ctf.apply_ctf(img, -np.ones((2, 16, 16))), -img, atol=1e-5)


def test_sample_ctf_params():
    p = ctf.sample_ctf_params(500, defocus_range=(1e4, 3e4), astigmatism=(0, 800), seed=2)
    mean = (p["defocus_u"] + p["defocus_v"]) / 2
    assert mean.min() >= 1e4 and mean.max() <= 3e4
    assert np.all(p["defocus_u"] >= p["defocus_v"])
    assert (p["defocus_u"] - p["defocus_v"]).max() <= 800
    q = ctf.sample_ctf_params(500, seed=2, astigmatism=(0, 800))
    np.testing.assert_array_equal(p["defocus_u"], q["defocus_u"])


def _ctf_reference(size, pix, du, dv, ang, voltage=300.0, cs=2.7, amp=0.1, ps=0.0, bf=0.0):
    """The CTF formula of ``ctf_2d_batch`` evaluated directly in float64 (atan2 angles)."""
    f = np.fft.fftfreq(size, d=pix)
    ky, kx = f[:, None], f[None, :]
    k2, theta = kx ** 2 + ky ** 2, np.arctan2(ky, kx)
    du, dv, ang, ps = np.broadcast_arrays(*[np.atleast_1d(np.asarray(a, np.float64))
                                            for a in (du, dv, ang, ps)])
    lam = ctf.electron_wavelength(voltage)
    df = (0.5 * (du + dv)[:, None, None]
          + 0.5 * (du - dv)[:, None, None] * np.cos(2.0 * (theta - ang[:, None, None])))
    chi = (np.pi * lam * df * k2 - 0.5 * np.pi * cs * 1e7 * lam ** 3 * k2 ** 2
           + ps[:, None, None] + np.arcsin(amp))
    return np.sin(chi) * np.exp(-bf * k2 / 4.0)


@pytest.mark.parametrize("size, pix, df, astig", [(96, 3.667, 2e4, 500.0), (77, 1.0, 5e4, 3000.0),
                                                  (256, 0.8, 4e4, 1000.0)])
def test_ctf_2d_batch_matches_float64_formula(size, pix, df, astig):
    # The fast CTF reduces the large phase terms modulo 2 pi in float64 before the float32
    # grid sum: it must stay accurate when chi reaches hundreds of radians (small pixels).
    rng = np.random.default_rng(1)
    m = 5
    mean = df * rng.uniform(0.5, 1.0, m)
    a = astig * rng.uniform(-1.0, 1.0, m)
    ang = rng.uniform(0.0, np.pi, m)
    ps = rng.uniform(0.0, 1.0, m)
    kw = dict(voltage=200.0, cs=1.4, amplitude_contrast=0.07)
    got = ctf.ctf_2d_batch(size, pix, mean + a / 2, mean - a / 2, ang, phase_shift=ps,
                               b_factor=40.0, **kw)
    ref = _ctf_reference(size, pix, mean + a / 2, mean - a / 2, ang, 200.0, 1.4, 0.07, ps, 40.0)
    assert got.shape == (m, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=3e-6, rtol=0)
    # one image at a time gives the same as the batch; scalars broadcast
    np.testing.assert_array_equal(ctf.ctf_2d(size, pix, mean[2] + a[2] / 2, mean[2] - a[2] / 2,
                                                 ang[2], phase_shift=ps[2], b_factor=40.0, **kw),
                                  got[2])
    one = ctf.ctf_2d_batch(size, pix, 2e4, 2e4, 0.0, **kw)
    ref = _ctf_reference(size, pix, 2e4, 2e4, 0.0, 200.0, 1.4, 0.07)[0]
    np.testing.assert_allclose(one[0], ref, atol=3e-6, rtol=0)


@pytest.mark.parametrize("size", [64, 65])
def test_ctf_half_plane_is_slice_of_full_grid(size):
    # _filter_padded's CTF on the rfft2 half plane is the first size // 2 + 1 columns of
    # ctf_2d_batch's fft2 layout (the Nyquist column of an even size included).
    p = ctf.sample_ctf_params(4, seed=3, astigmatism=(0, 2000))
    maker = ctf._CTFMaker(size, 2.0, True, **p)
    assert maker.shape == (size, size // 2 + 1)
    half = maker.fill(0, 4, np.empty((4, size * (size // 2 + 1)), np.float32))
    full = ctf.ctf_2d_batch(size, 2.0, **p)
    np.testing.assert_allclose(half.reshape(4, size, -1), full[..., : size // 2 + 1], atol=1e-6)
    # images b0:b1 of a batch are the same whatever the batch
    part = maker.fill(1, 3, np.empty((2, size * (size // 2 + 1)), np.float32))
    np.testing.assert_array_equal(part, half[1:3])


def _filter_padded_reference(images, shifts=None, ctf_params=None, pixel_size=1.0, pad_size=None):
    """The direct computation: full padded box, rfft2, 2-D ramp, full-grid CTF, irfft2."""
    images = np.asarray(images, dtype=np.float64)
    m, n = images.shape[0], images.shape[-1]
    if pad_size is None:
        extra = 0 if shifts is None else int(np.ceil(np.abs(shifts).max(initial=0)))
        pad_size = image_ops._even_fast_len(2 * n if ctf_params is not None else n + 2 * extra + 2)
    o = pad_size // 2 - n // 2
    big = np.zeros((m, pad_size, pad_size))
    big[:, o:o + n, o:o + n] = images
    f = np.fft.rfft2(np.fft.ifftshift(big, axes=(-2, -1)))
    if shifts is not None:
        shifts = np.asarray(shifts, dtype=np.float64).reshape(m, 2)
        ky = np.fft.fftfreq(pad_size)[:, None]
        kx = np.fft.rfftfreq(pad_size)[None, :]
        f *= np.exp(-2j * np.pi * (shifts[:, 0, None, None] * kx + shifts[:, 1, None, None] * ky))
    if ctf_params is not None:
        p = dict(ctf_params)
        f *= _ctf_reference(pad_size, pixel_size, p.pop("defocus_u"), p.pop("defocus_v"),
                            p.pop("astig_angle"), p.get("voltage", 300.0), p.get("cs", 2.7),
                            p.get("amplitude_contrast", 0.1), p.get("phase_shift", 0.0),
                            p.get("b_factor", 0.0))[..., : pad_size // 2 + 1]
    out = np.fft.fftshift(np.fft.irfft2(f, s=(pad_size, pad_size)), axes=(-2, -1))
    return out[:, o:o + n, o:o + n]


@pytest.mark.parametrize("n, pad_size", [(32, None), (33, None), (20, 47), (21, 21)])
def test_filter_padded_matches_direct_computation(n, pad_size):
    rng = np.random.default_rng(n)
    m = 7
    imgs = rng.standard_normal((m, n, n)).astype(np.float32)
    shifts = rng.uniform(-3.5, 3.5, (m, 2))
    p = ctf.sample_ctf_params(m, seed=n, defocus_range=(5e3, 2e4), astigmatism=(0, 1500))
    p["phase_shift"] = 0.3
    p["b_factor"] = 20.0
    scalar = dict(defocus_u=1.2e4, defocus_v=1.1e4, astig_angle=0.4)
    for kw in (dict(shifts=shifts), dict(ctf_params=p), dict(shifts=shifts, ctf_params=p),
               dict(ctf_params=scalar)):
        got = image_ops._filter_padded(imgs, pixel_size=2.5, pad_size=pad_size, **kw)
        ref = _filter_padded_reference(imgs, pixel_size=2.5, pad_size=pad_size, **kw)
        assert got.shape == (m, n, n) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)


def test_filter_padded_chunks_and_threads_do_not_change_results(monkeypatch):
    # many small images: several chunks (buffers reused), on several threads, and images
    # done one at a time (16 px: a 32 px padded box, ~480 images a chunk)
    rng = np.random.default_rng(5)
    m, n = 1100, 16
    imgs = rng.standard_normal((m, n, n)).astype(np.float32)
    shifts = rng.uniform(-2, 2, (m, 2))
    p = ctf.sample_ctf_params(m, seed=5)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    many = image_ops._filter_padded(imgs, shifts=shifts, ctf_params=p, pixel_size=4.0)
    for i in (0, 500, 1099):
        one = image_ops._filter_padded(imgs[i:i + 1], shifts=shifts[i:i + 1], pixel_size=4.0,
                                     ctf_params={k: (v[i:i + 1] if np.ndim(v) else v)
                                                 for k, v in p.items()})
        np.testing.assert_allclose(many[i], one[0], atol=1e-6)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    np.testing.assert_array_equal(
        image_ops._filter_padded(imgs, shifts=shifts, ctf_params=p, pixel_size=4.0), many)
    with pytest.raises(ValueError):
        image_ops._filter_padded(imgs, ctf_params={k: (v[:5] if np.ndim(v) else v)
                                                 for k, v in p.items()})


@pytest.mark.parametrize("total, chunk, n_threads", [(0, 4, 2), (1, 4, 2), (10, 3, 2), (10, 3, 1),
                                                     (9, 3, 4), (5, 100, 2)])
def test_run_chunks_covers_each_item_once(total, chunk, n_threads):
    seen = np.zeros(total, int)

    def fn(b0, b1):
        assert 0 < b1 - b0 <= chunk
        seen[b0:b1] += 1

    threads.run_chunks(total, chunk, fn, n_threads=n_threads)
    np.testing.assert_array_equal(seen, 1)


# -------------------------------------------------------------------------------- noise

def test_noise_variance_and_snr_round_trip():
    zeros = np.zeros((50, 32, 32), np.float32)
    noisy = image_ops.add_noise(zeros, sigma2=16.0, seed=1)
    np.testing.assert_allclose(noisy.var(), 16.0, rtol=0.02)
    np.testing.assert_array_equal(noisy, image_ops.add_noise(zeros, sigma2=16.0, seed=1))
    assert not np.array_equal(noisy, image_ops.add_noise(zeros, sigma2=16.0, seed=2))
    np.testing.assert_allclose(image_ops.sigma2_to_snr_db(16.0), -12.04, atol=0.01)
    for s2 in (0.5, 4.0, 16.0):
        snr = image_ops.sigma2_to_snr_db(s2, 2.0)
        np.testing.assert_allclose(image_ops.snr_db_to_sigma2(snr, 2.0), s2)
    signal = 3.0 * np.random.default_rng(0).standard_normal((50, 32, 32)).astype(np.float32)
    out = image_ops.add_noise(signal, snr_db=-6.0, seed=0)
    measured = image_ops.sigma2_to_snr_db((out - signal).var(), signal.var())
    np.testing.assert_allclose(measured, -6.0, atol=0.1)
    with pytest.raises(ValueError):
        image_ops.add_noise(signal, sigma2=1.0, snr_db=0.0)


# ----------------------------------------------------------------- resampling, normalising

def test_downsample_preserves_low_frequencies_and_values():
    n, m = 64, 32
    c = np.arange(n) - n // 2
    img = np.exp(-(c[:, None] ** 2 + (c[None, :] - 4) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    small = image_ops.downsample(img[None], m)[0]
    cm = (np.arange(m) - m // 2) * (n / m)
    expected = np.exp(-(cm[:, None] ** 2 + (cm[None, :] - 4) ** 2) / (2 * 4.0 ** 2))
    np.testing.assert_allclose(small, expected, atol=1e-4)
    # low-frequency Fourier coefficients (centred) agree up to the pixel-count factor
    F = np.fft.fft2(np.fft.ifftshift(img))
    G = np.fft.fft2(np.fft.ifftshift(small)) * (n / m) ** 2
    for ky, kx in [(0, 0), (0, 3), (2, -5), (-4, 1)]:
        np.testing.assert_allclose(G[ky, kx], F[ky, kx], atol=1e-3 * abs(F[0, 0]))
    # up then down is the identity; odd sizes keep the centre too
    np.testing.assert_allclose(image_ops.downsample(image_ops.downsample(small[None], 45), m)[0],
                               small, atol=1e-4)
    vol = np.zeros((16, 16, 16), np.float32)
    vol[8, 8, 8] = 1.0
    small_vol = volumes.downsample_volume(vol, 9)
    assert np.unravel_index(np.argmax(small_vol), small_vol.shape) == (4, 4, 4)


def test_normalize_images():
    rng = np.random.default_rng(0)
    imgs = (5 + 3 * rng.standard_normal((4, 20, 20))).astype(np.float32)
    out = image_ops.normalize_images(imgs)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-4)
    imgs[:, 8:12, 8:12] += 100.0                  # a bright particle in the centre
    out = image_ops.normalize_images(imgs, radius=6)
    c = np.arange(20) - 10
    bg = (c[:, None] ** 2 + c[None, :] ** 2) > 36
    np.testing.assert_allclose(out[:, bg].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(out[:, bg].std(axis=1), 1, atol=1e-4)


# --------------------------------------------------------------------------- read_volume

def _write_mrc(path, data, voxel_size=2.0, axes=None):
    import warnings

    import mrcfile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # mrcfile warns about NaN data
        with mrcfile.new(str(path), overwrite=True) as mrc:
            mrc.set_data(np.asarray(data, dtype=np.float32))
            mrc.voxel_size = voxel_size
            if axes is not None:
                mrc.header.mapc, mrc.header.mapr, mrc.header.maps = axes


def test_read_volume_pads_to_centred_even_cube(tmp_path):
    data = np.zeros((7, 5, 9), np.float32)
    data[3, 2, 4] = 1.0                           # the centre voxel of each axis
    _write_mrc(tmp_path / "v.mrc", data, 2.5)
    vol, vs = volumes.read_volume(tmp_path / "v.mrc")
    assert vol.shape == (10, 10, 10) and vol.dtype == np.float32
    assert vs == pytest.approx(2.5)
    assert vol[5, 5, 5] == 1.0 and vol.sum() == 1.0


def test_read_volume_honours_axis_order(tmp_path):
    rng = np.random.default_rng(0)
    vol_zyx = rng.standard_normal((3, 4, 5)).astype(np.float32)
    # stored with columns = z, rows = y, sections = x: array (x, y, z)
    _write_mrc(tmp_path / "a.mrc", vol_zyx.transpose(2, 1, 0), axes=(3, 2, 1))
    vol, _ = volumes.read_volume(tmp_path / "a.mrc", cube=False)
    np.testing.assert_array_equal(vol, vol_zyx)


@pytest.mark.parametrize("case", ["missing", "short", "junk", "truncated", "2d", "nan"])
def test_read_volume_errors(tmp_path, case):
    path = tmp_path / "bad.mrc"
    if case == "short":
        path.write_bytes(b"this is not an MRC file" * 10)
    elif case == "junk":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        _write_mrc(path, np.ones((16, 16, 16)))
        path.write_bytes(path.read_bytes()[:3000])
    elif case == "2d":
        _write_mrc(path, np.zeros((8, 8)))
    elif case == "nan":
        data = np.zeros((4, 4, 4))
        data[1, 2, 3] = np.nan
        _write_mrc(path, data)
    with pytest.raises(ValueError):
        volumes.read_volume(path)


# ------------------------------------------------------------------- simulate_particles

def test_simulate_particles_reproducible_and_scaled():
    vol, _ = _gaussians(24, [(2.0, -3.0, 1.0), (-3.0, 1.0, 2.0)], [2.0, 2.5])
    kw = dict(image_size=16, max_shift=2.0, ctf={"defocus_range": (5e3, 1e4)},
              sigma2=4.0, voxel_size=3.0, seed=5, batch_size=3)
    calls = []
    a = simulation.simulate_particles(vol, 8, progress=lambda d, t: calls.append((d, t)), **kw)
    b = simulation.simulate_particles(vol, 8, **kw)
    c = simulation.simulate_particles(vol, 8, **dict(kw, seed=6))
    assert a["images"].shape == (8, 16, 16) and a["images"].dtype == np.float32
    for key in ("images", "clean", "quaternions", "shifts"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["quaternions"], c["quaternions"])
    assert calls[-1] == (8, 8)
    assert a["pixel_size"] == pytest.approx(3.0 * 24 / 16)
    np.testing.assert_allclose(np.var(a["clean"].reshape(8, -1), axis=1).mean(), 1.0, rtol=1e-4)
    np.testing.assert_allclose((a["images"] - a["clean"]).var(), 4.0, rtol=0.15)
    assert a["snr_db"] == pytest.approx(-10 * np.log10(4.0))
    assert np.abs(a["shifts"]).max() <= 2.0 and a["ctf"]["defocus_u"].shape == (8,)


def test_simulate_particles_noiseless_matches_projection():
    vol, _ = _gaussians(20, [(1.0, 2.0, -1.0)], [2.0])
    out = simulation.simulate_particles(vol, 4, seed=1)
    proj = projection.project(vol, out["quaternions"]) * out["scale"]
    np.testing.assert_allclose(out["images"], proj, atol=1e-5 * np.abs(proj).max())
    assert out["sigma2"] is None and out["ctf"] is None
    np.testing.assert_array_equal(out["shifts"], 0)
