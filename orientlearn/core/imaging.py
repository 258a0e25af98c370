"""The imaging model, eq. (1) of the paper: ``p = C_phi S_t P_theta x + n``.

* ``P_theta``: ``project`` (CPU, Fourier-slice theorem), ``project_astra`` (GPU, ASTRA),
  ``real_space_project`` (slow reference for tests).
* ``S_t``: ``shift_images``, ``sample_shifts``.
* ``C_phi``: ``ctf_2d``, ``ctf_2d_batch``, ``apply_ctf``, ``sample_ctf_params``.
* ``n``: ``add_noise``, ``snr_db_to_sigma2``, ``sigma2_to_snr_db``.
* Everything at once: ``simulate_particles``.
* Also: ``read_volume``, ``pad_to_cube``, ``downsample``, ``downsample_volume``,
  ``normalize_images``, ``rotate_images``, ``mirror_images``.

Conventions are those of ``geometry.py``: a volume is ``vol[z, y, x]``, an image
``img[y, x]`` (x = column, y = row), the centre of a box of ``N`` samples is at index
``N // 2``, and an orientation ``R`` (3x3 matrix or quaternion ``(w, x, y, z)``) gives
the image ``p(x, y) = integral V(R^T (x, y, z)) dz``. Lengths are in pixels (= voxels)
unless a name says Angstrom (``_A``); angles are radians.

CTF sign convention (Relion's, "particles are white"): ``CTF(k) = sin(chi(k))`` with
``chi(k) = pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + phase_shift + arcsin(A)``, so
``CTF(0) = A`` (the amplitude contrast, > 0) and the CTF is positive over its first lobe
for an underfocused image (``df > 0``).
"""
import concurrent.futures
import dataclasses
import functools
import os
import threading
import warnings

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi
import scipy.signal

from . import geometry

__all__ = [
    "read_volume", "pad_to_cube", "VolumeSpectrum", "prepare_volume", "project",
    "project_astra", "has_cuda", "real_space_project", "electron_wavelength", "ctf_2d",
    "ctf_2d_batch", "apply_ctf", "sample_ctf_params", "sample_shifts", "shift_images",
    "add_noise", "snr_db_to_sigma2", "sigma2_to_snr_db", "downsample", "downsample_volume",
    "normalize_images", "rotate_images", "mirror_images", "apply_image_transform",
    "crop_or_pad", "crop_or_pad_volume", "simulate_particles", "astra_vectors",
]


# ----------------------------------------------------------------------------- volumes

def pad_to_cube(vol, even=True):
    """Zero-pad a 3-D array ``(Z, Y, X)`` to a cube ``(N, N, N)``, ``N = max(Z, Y, X)``
    (plus one if ``even`` and that is odd). The centre index ``n // 2`` of every axis
    lands on ``N // 2``, so a map centred on its box stays centred."""
    vol = np.asarray(vol)
    if vol.ndim != 3:
        raise ValueError(f"pad_to_cube needs a 3-D array, got shape {vol.shape}")
    size = max(vol.shape)
    if even and size % 2:
        size += 1
    if vol.shape == (size,) * 3:
        return vol
    out = np.zeros((size,) * 3, dtype=vol.dtype)
    sl = tuple(slice(size // 2 - n // 2, size // 2 - n // 2 + n) for n in vol.shape)
    out[sl] = vol
    return out


def read_volume(path, cube=True, even=True):
    """Read a density map from an MRC file.

    Returns ``(vol, voxel_size_A)``: ``vol`` float32 ``(N, N, N)`` indexed ``[z, y, x]``
    (the file's axis order, MAPC/MAPR/MAPS, is honoured), zero-padded to a cube with
    ``pad_to_cube(even=even)`` if ``cube``; ``voxel_size_A`` in Angstrom (1.0 if the
    header says 0). Raises ``ValueError`` for a missing, unreadable or non-3-D file, an
    anisotropic voxel size, or non-finite values.
    """
    import mrcfile
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Volume file not found: {path!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                data = None if mrc.data is None else np.array(mrc.data, dtype=np.float32)
                header = mrc.header
                axes = (int(header.maps), int(header.mapr), int(header.mapc))
                vs = mrc.voxel_size
                voxel = (float(vs.x), float(vs.y), float(vs.z))
    except Exception as exc:  # mrcfile raises several types for a corrupt file
        raise ValueError(f"Cannot read {path!r} as an MRC volume: {exc}") from exc
    if data is None:
        raise ValueError(f"Cannot read {path!r} as an MRC volume: no data (corrupt header?)")
    if data.ndim != 3 or min(data.shape) < 2:
        raise ValueError(f"{path!r} is not a 3-D volume: data shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path!r} contains NaN or infinite values")
    if sorted(axes) == [1, 2, 3] and axes != (3, 2, 1):
        # array axes are (sections, rows, columns) = axes (maps, mapr, mapc); want (z, y, x)
        data = np.ascontiguousarray(data.transpose([axes.index(3), axes.index(2), axes.index(1)]))
    if not np.allclose(voxel, voxel[0], rtol=1e-3):
        raise ValueError(f"{path!r} has an anisotropic voxel size {voxel} A")
    voxel_size = voxel[0] if voxel[0] > 0 else 1.0
    if cube:
        data = pad_to_cube(data, even=even)
    return data, voxel_size


def _check_cube(volume):
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"expected a cubic volume (N, N, N), got shape {volume.shape}; "
                         "use pad_to_cube")
    return volume


def _as_matrices(rotations):
    """``(M, 3, 3)`` float64 rotation matrices from matrices or quaternions ``(M, 4)``."""
    r = np.asarray(rotations, dtype=np.float64)
    if r.shape[-2:] == (3, 3):
        return r.reshape(-1, 3, 3)
    if r.shape[-1] == 4:
        return geometry.quaternion_to_matrix(r.reshape(-1, 4))
    raise ValueError(f"rotations must be (M, 3, 3) matrices or (M, 4) quaternions, got {r.shape}")


def _centred_coords(n):
    return np.arange(n) - n // 2


def _n_threads():
    """CPU cores this process may use (``sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _run_chunks(total, chunk, fn, threads=None):
    """Call ``fn(b0, b1)`` for the chunks ``[b0, b1)`` of ``range(total)`` of at most ``chunk``
    items, on up to ``threads`` (default ``_n_threads()``) threads; ``fn`` must write
    disjoint outputs (numpy and scipy.fft release the GIL on large arrays)."""
    starts = range(0, total, max(1, int(chunk)))
    threads = min(threads or _n_threads(), len(starts))
    if threads <= 1:
        for b0 in starts:
            fn(b0, min(total, b0 + chunk))
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda b0: fn(b0, min(total, b0 + chunk)), starts):
            pass


# ----------------------------------------------------------------- Fourier-slice projector

@dataclasses.dataclass(frozen=True)
class VolumeSpectrum:
    """The 3-D spectrum of a volume, ready for ``project`` (``prepare_volume`` makes it).

    ``spectrum``: complex64 ``(Np + 4,) * 3``, zero frequency at index ``Np // 2 + 2``
    (``fftshift`` order, wrapped by 2 samples on every side so the interpolation stencil
    never leaves the array); ``spectrum_half_shift``: same, sampled on the grid shifted by
    half a sample along every axis (or None); ``size``: ``N`` of the volume; ``padded_size``: ``Np``;
    ``support_radius``: radius in voxels of the volume's non-zero region (used to size
    the 2-D grid so projections do not wrap around).
    """
    spectrum: np.ndarray
    size: int
    padded_size: int
    support_radius: float
    precompensated: bool
    spectrum_half_shift: np.ndarray = None

    @property
    def oversampling(self):
        return self.padded_size / self.size


_WRAP = 2


def _support_radius(volume, rel_threshold=1e-4):
    """Largest distance (voxels) from the centre of a voxel with ``|V| > thr * max|V|``."""
    a = np.abs(volume)
    peak = a.max()
    if peak == 0:
        return 0.0
    z, y, x = np.nonzero(a > rel_threshold * peak)
    c = volume.shape[0] // 2
    return float(np.sqrt(((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2).max()))


def prepare_volume(volume, oversampling=2, precompensate=True, interleave=True):
    """3-D FFT of a zero-padded volume for repeated ``project`` calls.

    ``volume`` ``(N, N, N)``; ``oversampling``: the volume is zero-padded to
    ``Np = oversampling * N`` (rounded up to even) before the FFT, which makes trilinear
    interpolation of the spectrum accurate; ``precompensate``: divide the volume by the
    real-space image of the trilinear kernel, ``sinc^2(x / Np) sinc^2(y / Np) sinc^2(z / Np)``,
    so the interpolated slices give the line integrals without apodisation.

    ``interleave``: also sample the spectrum on the grid shifted by half a sample, and
    average the two interpolations. Interpolating samples of a spectrum brings in the
    volume's periodic copies (period ``Np``), weighted by the kernel's real-space
    sidelobes: up to ``1 - sinc^2(N / 2Np)`` (19 % at the box edge for ``Np = 2N``) for
    views along an axis. On the shifted grid the copies ``n`` have the sign
    ``(-1)^(n1 + n2 + n3)``, so the average cancels the nearest ones (the error drops
    about 10x) for twice the interpolation work and memory.
    Returns a ``VolumeSpectrum`` (about ``8 Np^3`` bytes, twice that if ``interleave``).
    """
    volume = _check_cube(volume).astype(np.float32)
    n = volume.shape[0]
    padded = int(np.ceil(oversampling * n))
    padded += padded % 2
    if padded < n:
        raise ValueError("oversampling must be >= 1")
    vol = volume
    if precompensate:
        s = np.sinc(_centred_coords(n) / padded).astype(np.float32) ** 2
        vol = vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])

    def spectrum(v):
        big = np.zeros((padded,) * 3, dtype=np.complex64 if np.iscomplexobj(v) else np.float32)
        o = padded // 2 - n // 2
        big[o:o + n, o:o + n, o:o + n] = v
        # ifftshift puts the centre voxel at index 0 so the spectrum has no phase ramp.
        spec = sfft.fftshift(sfft.fftn(sfft.ifftshift(big), workers=-1)).astype(np.complex64)
        del big
        return np.pad(spec, _WRAP, mode="wrap")   # periodic: the stencil may cross Nyquist

    shifted = None
    if interleave:
        # F(k + 1/2) = FFT of V(x) exp(-i pi (x + y + z) / Np)
        ph = np.exp(-1j * np.pi * _centred_coords(n) / padded).astype(np.complex64)
        shifted = spectrum(vol * (ph[:, None, None] * ph[None, :, None] * ph[None, None, :]))
    return VolumeSpectrum(spectrum=spectrum(vol), size=n, padded_size=padded,
                          support_radius=_support_radius(volume), precompensated=precompensate,
                          spectrum_half_shift=shifted)


def _even_fast_len(n):
    n = sfft.next_fast_len(int(n))
    while n % 2:
        n = sfft.next_fast_len(n + 1)
    return n


def _slice_grid(size, grid):
    """Sample points of the half-plane (rfft layout) of a ``grid``-sized image inside the
    Nyquist disc: flat indices into ``(grid, grid // 2 + 1)`` and ``(kx, ky)`` in cycles per
    ``grid`` samples."""
    ky = sfft.fftfreq(grid) * grid
    kx = sfft.rfftfreq(grid) * grid
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    inside = (KX ** 2 + KY ** 2) <= (grid / 2.0) ** 2
    return np.flatnonzero(inside), KX[inside], KY[inside]


def _interp_trilinear(flat, m1, centre, X, Y, Z):
    """Trilinear interpolation of a flattened ``(m1, m1, m1)`` complex array ``[z, y, x]``
    at index coordinates (relative to ``centre``) ``X, Y, Z`` (same shapes)."""
    X = X + centre
    Y = Y + centre
    Z = Z + centre
    x0 = np.floor(X)
    y0 = np.floor(Y)
    z0 = np.floor(Z)
    fx = X - x0
    fy = Y - y0
    fz = Z - z0
    itype = np.int32 if m1 ** 3 < 2 ** 31 - 1 else np.int64
    base = (z0.astype(itype) * m1 + y0.astype(itype)) * m1 + x0.astype(itype)
    del X, Y, Z, x0, y0, z0

    def along_x(b):
        a = np.take(flat, b)
        return a + (np.take(flat, b + 1) - a) * fx

    c00 = along_x(base)
    c0 = c00 + (along_x(base + m1) - c00) * fy
    base += m1 * m1
    c01 = along_x(base)
    c1 = c01 + (along_x(base + m1) - c01) * fy
    return c0 + (c1 - c0) * fz


def project(volume, rotations, oversampling=2, batch_size=None, progress=None,
            image_padding=None, out=None, interleave=True):
    """Projections of a volume: ``img(x, y) = integral V(R^T (x, y, z)) dz``.

    Fourier-slice theorem on the CPU: the (padded, pre-compensated) volume is
    transformed once, each central slice ``F(R^T (kx, ky, 0))`` is sampled by trilinear
    interpolation (batched in numpy, complex64), and inverse 2-D FFTs give the images.

    ``volume``: ``(N, N, N)`` float array or a ``VolumeSpectrum`` from ``prepare_volume``
    (then ``oversampling`` and ``interleave``, see ``prepare_volume``, are ignored).
    Accuracy (relative L2 error against exact line integrals of Gaussians filling the
    box, worst of random and axis-aligned views): about 1 % with the defaults
    (``oversampling=2``, interleaved), 4 % without interleaving; less for compact objects.
    ``rotations``: ``(M, 3, 3)`` matrices or ``(M, 4)``
    quaternions. ``image_padding``: the 2-D grid is ``image_padding * N`` samples and
    cropped to ``N`` so that parts of the rotated object outside the box do not wrap
    into it; by default it is chosen from the volume's support radius (``1`` when the
    object fits in the inscribed sphere). ``batch_size``: projections per numpy batch.
    ``progress(done, total)`` is called after each batch. ``out``: optional float32
    ``(M, N, N)`` array to fill.
    Returns float32 ``(M, N, N)``, values in density x voxels (a line integral).
    """
    spec = (volume if isinstance(volume, VolumeSpectrum)
            else prepare_volume(volume, oversampling, interleave=interleave))
    R = _as_matrices(rotations).astype(np.float32)
    n, padded = spec.size, spec.padded_size
    if image_padding is None:
        grid = n if spec.support_radius <= n / 2 else _even_fast_len(
            np.ceil(n / 2 + spec.support_radius + 1))
    else:
        grid = _even_fast_len(max(n, np.ceil(image_padding * n)))
    flat_idx, kx, ky = _slice_grid(n, grid)
    scale = padded / grid                         # image frequency -> spectrum index units
    kx = (kx * scale).astype(np.float32)
    ky = (ky * scale).astype(np.float32)
    m1 = spec.spectrum.shape[0]
    centre = np.float32(padded // 2 + _WRAP)
    flat = spec.spectrum.reshape(-1)
    flat_shift = None if spec.spectrum_half_shift is None else spec.spectrum_half_shift.reshape(-1)
    total = len(R)
    if batch_size is None:
        batch_size = max(1, (1 << 20) // max(1, kx.size))
    if out is None:
        out = np.empty((total, n, n), dtype=np.float32)
    start = grid // 2 - n // 2
    half = np.zeros((min(batch_size, max(total, 1)), grid, grid // 2 + 1), dtype=np.complex64)
    for b0 in range(0, total, batch_size):
        Rb = R[b0:b0 + batch_size]
        nb = len(Rb)
        # R^T (kx, ky, 0) = kx * row0(R) + ky * row1(R), components (x, y, z)
        X = kx * Rb[:, 0, 0, None] + ky * Rb[:, 1, 0, None]
        Y = kx * Rb[:, 0, 1, None] + ky * Rb[:, 1, 1, None]
        Z = kx * Rb[:, 0, 2, None] + ky * Rb[:, 1, 2, None]
        vals = _interp_trilinear(flat, m1, centre, X, Y, Z)
        if flat_shift is not None:
            vals += _interp_trilinear(flat_shift, m1, centre - np.float32(0.5), X, Y, Z)
            vals *= np.float32(0.5)
        del X, Y, Z
        h = half[:nb]
        h.reshape(nb, -1)[:, flat_idx] = vals
        imgs = sfft.irfft2(h, s=(grid, grid), workers=-1)
        imgs = sfft.fftshift(imgs, axes=(-2, -1))
        out[b0:b0 + nb] = imgs[:, start:start + n, start:start + n]
        if progress is not None:
            progress(b0 + nb, total)
    return out


# ---------------------------------------------------------------------------- ASTRA (GPU)

def has_cuda():
    """True if ASTRA is importable and sees a CUDA device."""
    try:
        import astra
        return bool(astra.use_cuda())
    except Exception:
        return False


def astra_vectors(rotations, size):
    """ASTRA ``parallel3d_vec`` vectors ``(M, 12)`` for orientations ``rotations`` and a
    ``size``-pixel square detector, for a volume geometry whose voxel ``i`` (per axis) is
    at world coordinate ``i - size // 2`` (see ``project_astra``).

    ASTRA's row ``(ray, d, u, v)``: ray direction, detector centre, and the vectors from
    detector pixel (0, 0) to (0, 1) (``u``, along columns = our x) and to (1, 0) (``v``,
    along rows = our y), all in world ``(x, y, z)``. Our pixel ``(x, y)`` sees the line
    ``R^T (x, y, t)``: so ray = ``R^T e_z``, u = ``R^T e_x``, v = ``R^T e_y`` (rows of ``R``).
    ASTRA's detector centre lies between pixels for an even size, half a pixel from our
    centre pixel ``size // 2``, hence the offset of ``d``.
    """
    R = _as_matrices(rotations)
    u, v, ray = R[:, 0, :], R[:, 1, :], R[:, 2, :]
    delta = size // 2 - (size - 1) / 2.0           # 0.5 for even sizes, 0 for odd
    d = -delta * (u + v)
    return np.concatenate([ray, d, u, v], axis=1)


def project_astra(volume, rotations, gpu_index=None, batch_size=1024):
    """Same images as ``project`` (line integrals, ``(M, N, N)`` float32) from ASTRA's
    CUDA forward projector with a ``parallel3d_vec`` geometry. Needs ``has_cuda()``."""
    if not has_cuda():
        raise RuntimeError("project_astra needs ASTRA with a CUDA device; use project()")
    import astra
    volume = np.ascontiguousarray(_check_cube(volume), dtype=np.float32)
    n = volume.shape[0]
    lo, hi = -(n // 2) - 0.5, n - n // 2 - 0.5     # voxel i at world i - n // 2
    vol_geom = astra.create_vol_geom(n, n, n, lo, hi, lo, hi, lo, hi)
    vectors = astra_vectors(rotations, n)
    out = np.empty((len(vectors), n, n), dtype=np.float32)
    vol_id = astra.data3d.create("-vol", vol_geom, volume)   # ASTRA volume is [z, y, x]
    try:
        for b0 in range(0, len(vectors), batch_size):
            vec = vectors[b0:b0 + batch_size]
            proj_geom = astra.create_proj_geom("parallel3d_vec", n, n, vec)
            sino_id = astra.data3d.create("-sino", proj_geom, 0)
            cfg = astra.astra_dict("FP3D_CUDA")
            cfg["ProjectionDataId"] = sino_id
            cfg["VolumeDataId"] = vol_id
            if gpu_index is not None:
                cfg["option"] = {"GPUindex": gpu_index}
            alg_id = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg_id)
                sino = astra.data3d.get(sino_id)            # (rows, angles, cols)
            finally:
                astra.algorithm.delete(alg_id)
                astra.data3d.delete(sino_id)
            out[b0:b0 + len(vec)] = np.transpose(sino, (1, 0, 2))
    finally:
        astra.data3d.delete(vol_id)
    return out


# ---------------------------------------------------------------------- reference projector

def real_space_project(volume, rotation, order=3):
    """Slow reference: sample ``V(R^T (x, y, z))`` on the box grid by spline
    interpolation (``order``) and sum over ``z``. ``rotation``: ``(3, 3)`` or ``(4,)``.
    Only content inside the box after rotation counts. Returns float32 ``(N, N)``."""
    volume = _check_cube(volume).astype(np.float64)
    n = volume.shape[0]
    R = _as_matrices(rotation)[0]
    c = _centred_coords(n).astype(np.float64)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z])                        # (3, N, N, N) rotated-frame (x, y, z)
    s = np.einsum("ij,i...->j...", R, r)          # R^T r, volume-frame (x, y, z)
    coords = np.stack([s[2], s[1], s[0]]) + n // 2
    vals = ndi.map_coordinates(volume, coords.reshape(3, -1), order=order, mode="constant",
                               cval=0.0).reshape(n, n, n)
    return vals.sum(axis=0).astype(np.float32)


# ------------------------------------------------------------------------------------ CTF

def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Angstrom at ``voltage_kv`` kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2642598 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def _ctf_axes(size, pixel_size, half):
    """Frequencies (1/Angstrom, float64) of a ``size`` x ``size`` image's rows (``ky =
    fftfreq(size)``) and columns: ``kx = fftfreq(size)`` (``fft2`` layout) or, if ``half``,
    its first ``size // 2 + 1`` entries (the ``rfft2`` half plane; the Nyquist column of
    an even size keeps ``kx = -1 / 2 pixel``, as a slice of the full grid would)."""
    f = sfft.fftfreq(size, d=pixel_size)
    return f, (f[: size // 2 + 1] if half else f)


@functools.lru_cache(maxsize=16)
def _ctf_static_terms(size, pixel_size, half, voltage, cs, b_factor):
    """The image-independent parts of the CTF on the grid of ``_ctf_axes``, cached and
    read-only: the spherical-aberration phase ``-pi/2 Cs lambda^3 k^4`` reduced modulo
    ``2 pi`` to ``[-pi, pi]`` (computed in float64, stored float32, ``(rows, columns)``),
    and the envelope ``exp(-B k^2 / 4)`` (float32, same shape; None if ``b_factor`` is 0)."""
    ky, kx = _ctf_axes(size, pixel_size, half)
    k2 = kx[None, :] ** 2 + ky[:, None] ** 2
    lam = float(electron_wavelength(voltage))
    turns = (-0.25 * cs * 1e7 * lam ** 3) * k2 ** 2
    cs_phase = (2.0 * np.pi * (turns - np.rint(turns))).astype(np.float32)
    env = np.exp(-b_factor * k2 / 4.0).astype(np.float32) if b_factor else None
    for a in (cs_phase, env):
        if a is not None:
            a.flags.writeable = False
    return cs_phase, env


class _CTFMaker:
    """CTFs ``sin(chi)`` of a batch of images on the full (``fft2``) or half (``rfft2``)
    frequency grid of a ``size`` box; the arguments after ``half`` are those of
    ``ctf_2d_batch``.

    The defocus phase is a quadratic form, ``pi lambda df k^2 = 2 pi (A kx^2 + B ky^2 +
    C kx ky)`` with ``A, B = lambda / 2 (mean df +- (du - dv) / 2 cos 2a)`` and ``C =
    lambda (du - dv) / 2 sin 2a``: the ``kx^2`` and ``ky^2`` terms (the large ones, with
    the constant phase ``phase_shift + arcsin A`` in the ``ky`` one) are computed per row
    and per column in float64 and reduced modulo ``2 pi`` before the float32 grid sum, the
    small cross term is an outer product in float32, the ``Cs`` term comes reduced from
    ``_ctf_static_terms``. So the phase is accurate to ~1e-6 rad however large ``chi``
    gets (e.g. at 1 A pixels), at float32 speed; ``fill(b0, b1, out)`` writes the CTFs of
    images ``b0:b1`` into ``out`` float32 ``(b1 - b0, rows * columns)``; thread-safe.
    """

    def __init__(self, size, pixel_size, half, defocus_u, defocus_v, astig_angle, voltage=300.0,
                 cs=2.7, amplitude_contrast=0.1, phase_shift=0.0, b_factor=0.0):
        du, dv, ang, ps = np.broadcast_arrays(
            *[np.atleast_1d(np.asarray(a, dtype=np.float64))
              for a in (defocus_u, defocus_v, astig_angle, phase_shift)])
        if du.ndim != 1:
            raise ValueError("CTF parameters must be scalars or 1-D arrays")
        size, pixel_size, half = int(size), float(pixel_size), bool(half)
        self.ky, self.kx = _ctf_axes(size, pixel_size, half)
        self.ky2, self.kx2 = self.ky ** 2, self.kx ** 2
        self.ky32 = self.ky.astype(np.float32)
        self.shape = (len(self.ky), len(self.kx))
        self.cs_phase, self.env = _ctf_static_terms(size, pixel_size, half, float(voltage),
                                                    float(cs), float(b_factor))
        lam = float(electron_wavelength(voltage))
        w_amp = float(np.arcsin(np.clip(amplitude_contrast, 0.0, 1.0)))
        mean, half_astig = 0.5 * (du + dv), 0.5 * (du - dv)
        self.cx = 0.5 * lam * (mean + half_astig * np.cos(2.0 * ang))   # turns per kx^2
        self.cy = 0.5 * lam * (mean - half_astig * np.cos(2.0 * ang))   # turns per ky^2
        self.cxy = lam * half_astig * np.sin(2.0 * ang)                 # turns per kx ky
        self.c0 = (ps + w_amp) / (2.0 * np.pi)                          # turns
        self.m = len(du)

    @staticmethod
    def _reduced_phase(turns):
        return (2.0 * np.pi * (turns - np.rint(turns))).astype(np.float32)

    def fill(self, b0, b1, out):
        k = b1 - b0
        rows, cols = self.shape
        ux = self._reduced_phase(self.cx[b0:b1, None] * self.kx2)              # (k, cols)
        vy = self._reduced_phase(self.cy[b0:b1, None] * self.ky2 + self.c0[b0:b1, None])
        o = out[:k].reshape(k, rows, cols)
        np.add(vy[:, :, None], ux[:, None, :], out=o)
        cxy = self.cxy[b0:b1]
        if np.any(cxy != 0):
            wx = ((2.0 * np.pi) * cxy[:, None] * self.kx).astype(np.float32)  # (k, cols)
            o += self.ky32[None, :, None] * wx[:, None, :]
        o += self.cs_phase
        np.sin(o, out=o)
        if self.env is not None:
            o *= self.env
        return out[:k]


def ctf_2d_batch(size, pixel_size, defocus_u, defocus_v, astig_angle, voltage=300.0,
                 cs=2.7, amplitude_contrast=0.1, phase_shift=0.0, b_factor=0.0):
    """CTFs ``(M, size, size)`` float32 in ``np.fft.fft2`` layout of an ``img[y, x]``.

    ``defocus_u``, ``defocus_v`` (M,) Angstrom, positive = underfocus, ``defocus_u`` along
    the direction at ``astig_angle`` (M,) radians CCW from the x axis; ``voltage`` kV; ``cs``
    mm; ``amplitude_contrast`` in [0, 1); ``phase_shift`` radians; ``b_factor`` A^2
    (envelope ``exp(-B k^2 / 4)``); ``pixel_size`` Angstrom. Scalars broadcast.
    ``CTF = sin(chi)``, ``chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + phase_shift +
    arcsin(A)`` (Relion's sign: ``CTF(0) = A``). Evaluated in float32 with the large
    phase terms reduced modulo ``2 pi`` in float64 first (``_CTFMaker``): within ~1e-6 of
    the float64 formula for any pixel size and defocus.
    """
    maker = _CTFMaker(size, pixel_size, False, defocus_u, defocus_v, astig_angle, voltage, cs,
                      amplitude_contrast, phase_shift, b_factor)
    out = np.empty((maker.m, size, size), dtype=np.float32)
    flat = out.reshape(maker.m, -1)
    _run_chunks(maker.m, max(1, (1 << 19) // max(1, size * size)),
                lambda b0, b1: maker.fill(b0, b1, flat[b0:b1]))
    return out


def ctf_2d(size, pixel_size, defocus_u, defocus_v, astig_angle, voltage=300.0, cs=2.7,
           amplitude_contrast=0.1, phase_shift=0.0, b_factor=0.0):
    """One CTF ``(size, size)`` float32 in ``fft2`` layout; see ``ctf_2d_batch``."""
    return ctf_2d_batch(size, pixel_size, defocus_u, defocus_v, astig_angle, voltage, cs,
                        amplitude_contrast, phase_shift, b_factor)[0]


def apply_ctf(images, ctfs):
    """Multiply the spectra of ``images`` ``(M, N, N)`` (or ``(N, N)``) by ``ctfs``
    (``(N, N)`` or ``(M, N, N)``, ``fft2`` layout). Circular convolution: pad the images
    first (or use ``simulate_particles``) if the CTF's delocalisation matters."""
    images = np.asarray(images, dtype=np.float32)
    f = sfft.fft2(images, workers=-1)
    return np.real(sfft.ifft2(f * ctfs, workers=-1)).astype(np.float32)


def sample_ctf_params(n, defocus_range=(1e4, 3e4), astigmatism=(0.0, 500.0), seed=0,
                      voltage=300.0, cs=2.7, amplitude_contrast=0.1, phase_shift=0.0):
    """Random CTF parameters for ``n`` particles.

    Mean defocus uniform on ``defocus_range`` (Angstrom), astigmatism ``du - dv`` uniform
    on ``astigmatism`` (Angstrom), astigmatism angle uniform on ``[0, pi)``. Returns a dict
    of arrays ``defocus_u, defocus_v, astig_angle`` (n,) and the scalars ``voltage`` (kV),
    ``cs`` (mm), ``amplitude_contrast``, ``phase_shift`` (rad): the keywords of ``ctf_2d_batch``.
    """
    rng = np.random.default_rng(seed)
    mean = rng.uniform(defocus_range[0], defocus_range[1], n)
    astig = rng.uniform(astigmatism[0], astigmatism[1], n)
    angle = rng.uniform(0.0, np.pi, n)
    return dict(defocus_u=mean + astig / 2, defocus_v=mean - astig / 2, astig_angle=angle,
                voltage=float(voltage), cs=float(cs), amplitude_contrast=float(amplitude_contrast),
                phase_shift=float(phase_shift))


# --------------------------------------------------------------------------------- shifts

def sample_shifts(n, max_shift, seed=0):
    """``(n, 2)`` shifts ``(tx, ty)`` in pixels, each from the symmetric triangular
    distribution on ``[-max_shift, max_shift]`` (the paper's choice)."""
    rng = np.random.default_rng(seed)
    if max_shift <= 0:
        return np.zeros((n, 2))
    return rng.triangular(-max_shift, 0.0, max_shift, size=(n, 2))


def _filter_padded(images, shifts=None, ctf_params=None, pixel_size=1.0, pad_size=None):
    """Shift (``S_t``) and CTF (``C_phi``) on zero-padded images, then crop: no wrap-around.

    ``images`` ``(M, N, N)``; ``shifts`` ``(M, 2)`` pixels; ``ctf_params``: keywords of
    ``ctf_2d_batch`` with per-image arrays; ``pad_size``: padded box (default ~2N).

    The result is that of ``rfft2`` of the image zero-padded to ``pad_size`` (centre
    ``N // 2`` on ``pad_size // 2``, then ``ifftshift``ed), times the phase ramp and the
    CTF, ``irfft2``, ``fftshift``, centred crop; computed without the zero rows and
    columns: the ``N`` image rows go through a real FFT along x, the half plane through
    a complex FFT along y (and back), and only the ``N`` rows kept by the crop through
    the inverse real FFT. The shift ramp is separable (``exp(-2 pi i tx kx)`` on the
    x-transformed rows, ``exp(-2 pi i ty ky)`` with the CTF); images are processed in
    small chunks on ``_n_threads()`` threads (results do not depend on either)."""
    images = np.asarray(images, dtype=np.float32)
    m, n = images.shape[0], images.shape[-1]
    if images.shape[1:] != (n, n):
        raise ValueError(f"images must be (M, N, N), got {images.shape}")
    if pad_size is None:
        extra = 0 if shifts is None else int(np.ceil(np.abs(shifts).max(initial=0)))
        pad_size = _even_fast_len(2 * n if ctf_params is not None else n + 2 * extra + 2)
    P = int(pad_size)
    if P < n:
        raise ValueError(f"pad_size {P} is smaller than the image size {n}")
    h = P // 2 + 1
    c = n // 2                      # image index j -> padded, ifftshifted index (j - c) mod P
    r = n - c
    out = np.empty((m, n, n), dtype=np.float32)
    if m == 0:
        return out
    if shifts is not None:
        shifts = np.asarray(shifts, dtype=np.float64).reshape(m, 2)
        kx = sfft.rfftfreq(P)
        ky = sfft.fftfreq(P)
    maker = None if ctf_params is None else _CTFMaker(P, pixel_size, True, **ctf_params)
    if maker is not None and maker.m not in (1, m):
        raise ValueError(f"ctf_params have {maker.m} values per parameter for {m} images")
    shared_ctf = None                 # one CTF for all images (scalar parameters)
    if maker is not None and maker.m == 1:
        shared_ctf = maker.fill(0, 1, np.empty((1, P * h), dtype=np.float32))
    chunk = max(1, min(m, (1 << 18) // (P * h)))     # ~2 MB of spectra a chunk

    local = threading.local()           # per-thread buffers, zero where the padding is

    def work(b0, b1):
        k = b1 - b0
        if getattr(local, "row", None) is None:
            local.row = np.zeros((chunk, n, P), dtype=np.float32)
            local.f = np.zeros((chunk, P, h), dtype=np.complex64)
            local.ctf = None if maker is None else np.empty((chunk, P * h), dtype=np.float32)
        src = images[b0:b1]
        row = local.row[:k]
        row[:, :, :r] = src[:, :, c:]
        row[:, :, P - c:] = src[:, :, :c]
        fx = sfft.rfft(row, axis=-1, workers=1)                   # (k, N, h) complex64
        if shifts is not None:
            fx *= np.exp((-2j * np.pi) * shifts[b0:b1, 0, None] * kx).astype(np.complex64)[:, None, :]
        f = local.f[:k]
        f[:, :r] = fx[:, c:]
        f[:, r:P - c] = 0
        f[:, P - c:] = fx[:, :c]
        del fx
        f = sfft.fft(f, axis=-2, workers=1, overwrite_x=True)
        if maker is not None:
            ctf = shared_ctf if shared_ctf is not None else maker.fill(b0, b1, local.ctf)
            f *= ctf.reshape(-1, P, h)
        if shifts is not None:
            f *= np.exp((-2j * np.pi) * shifts[b0:b1, 1, None] * ky).astype(np.complex64)[:, :, None]
        f = sfft.ifft(f, axis=-2, workers=1, overwrite_x=True)
        kept = np.concatenate([f[:, P - c:], f[:, :r]], axis=1)   # the N rows of the crop
        res = sfft.irfft(kept, n=P, axis=-1, workers=1)           # (k, N, P) float32
        out[b0:b1, :, :c] = res[:, :, P - c:]
        out[b0:b1, :, c:] = res[:, :, :r]

    _run_chunks(m, chunk, work)
    return out


def shift_images(images, shifts):
    """Sub-pixel Fourier shift without wrap-around (zero-padded, then cropped).

    ``images`` ``(M, N, N)``, ``shifts`` ``(M, 2)`` ``(tx, ty)`` pixels: what was at the box
    centre moves to ``centre + (tx, ty)``, x = column, y = row. Returns float32 ``(M, N, N)``.
    """
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    out = _filter_padded(images[None] if single else images, shifts=np.reshape(shifts, (-1, 2)))
    return out[0] if single else out


# ---------------------------------------------------------------------------------- noise

def snr_db_to_sigma2(snr_db, signal_variance=1.0):
    """Noise variance giving ``snr_db`` (dB) for a signal of variance ``signal_variance``."""
    return signal_variance / 10.0 ** (np.asarray(snr_db, dtype=np.float64) / 10.0)


def sigma2_to_snr_db(sigma2, signal_variance=1.0):
    """SNR in dB, ``10 log10(signal_variance / sigma2)``."""
    return 10.0 * np.log10(signal_variance / np.asarray(sigma2, dtype=np.float64))


def add_noise(images, sigma2=None, snr_db=None, seed=0, signal_variance=None):
    """``images + n``, white Gaussian ``n ~ N(0, sigma2)``; float32, same shape.

    Give ``sigma2`` or ``snr_db``; with ``snr_db``, ``sigma2 = signal_variance /
    10^(snr_db / 10)`` where ``signal_variance`` defaults to the mean over images of the
    per-image variance of ``images``.
    """
    images = np.asarray(images, dtype=np.float32)
    if (sigma2 is None) == (snr_db is None):
        raise ValueError("give exactly one of sigma2 and snr_db")
    if sigma2 is None:
        if signal_variance is None:
            signal_variance = float(np.mean(np.var(images.reshape(-1, images.shape[-1] ** 2)
                                                   if images.ndim >= 2 else images, axis=-1)))
        sigma2 = float(snr_db_to_sigma2(snr_db, signal_variance))
    if sigma2 < 0:
        raise ValueError("sigma2 must be >= 0")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    noise *= np.float32(np.sqrt(sigma2))
    noise += images
    return noise


# ---------------------------------------------------------------- resampling, normalising

def _resample(arr, new_size, axes):
    """Fourier resampling to ``new_size`` along ``axes``, centre ``n // 2`` kept on
    ``new_size // 2``, values (not sums) preserved."""
    arr = sfft.ifftshift(np.asarray(arr, dtype=np.float32), axes=axes)
    for ax in axes:
        if arr.shape[ax] != new_size:
            arr = scipy.signal.resample(arr, new_size, axis=ax)
    return np.ascontiguousarray(sfft.fftshift(arr, axes=axes), dtype=np.float32)


def downsample(images, new_size):
    """Fourier-crop (or zero-pad, to upsample) images ``(..., N, N)`` to
    ``(..., new_size, new_size)``; pixel size becomes ``pixel * N / new_size``. Pixel values
    are preserved (a constant image stays constant)."""
    return _resample(images, int(new_size), axes=(-2, -1))


def downsample_volume(volume, new_size):
    """``downsample`` for a volume ``(N, N, N)`` -> ``(new_size,) * 3``."""
    return _resample(_check_cube(volume), int(new_size), axes=(0, 1, 2))


def normalize_images(images, radius=None):
    """Zero mean, unit standard deviation per image, float32 ``(M, N, N)``.

    With ``radius`` (pixels), mean and std come from the background outside the circle
    of that radius about the centre (Relion-style); otherwise from the whole image.
    """
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    x = images[None] if single else images
    n = x.shape[-1]
    flat = x.reshape(len(x), -1)
    if radius is not None:
        c = _centred_coords(n)
        mask = (c[:, None] ** 2 + c[None, :] ** 2 > radius ** 2).reshape(-1)
        if not mask.any():
            raise ValueError(f"no background outside radius {radius} in a {n}-pixel box")
        ref = flat[:, mask]
    else:
        ref = flat
    mean = ref.mean(axis=1, dtype=np.float64)
    std = ref.std(axis=1, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    out = ((flat - mean[:, None]) / std[:, None]).astype(np.float32).reshape(x.shape)
    return out[0] if single else out


def _centred_flip(a, axis):
    """``a`` reflected about index ``n // 2`` along ``axis`` (a permutation: for even ``n``
    index 0 maps to itself, i.e. periodic)."""
    n = a.shape[axis]
    return np.roll(np.flip(a, axis=axis), 1 - n % 2, axis=axis)


def mirror_images(images):
    """Mirror ``y -> -y`` about the centre row ``N // 2``: the projection of
    ``MIRROR_QUATERNION * q`` when the input is that of ``q``. ``(..., N, N)``."""
    return np.ascontiguousarray(_centred_flip(np.asarray(images), axis=-2))


def _rotate_quarter(img, k):
    """Exact rotation by ``k * pi / 2`` CCW in (x, y) about ``N // 2`` of ``(..., N, N)``."""
    k %= 4
    if k == 0:
        return img.copy()
    if k == 2:
        return _centred_flip(_centred_flip(img, -1), -2)
    t = np.swapaxes(img, -1, -2)
    # k = 1: new[y, x] = old[-x, y];  k = 3: new[y, x] = old[x, -y]
    return _centred_flip(t, -1 if k == 1 else -2)


def rotate_images(images, alpha, order=3):
    """Rotate images counter-clockwise in ``(x, y)`` by ``alpha`` radians about ``N // 2``:
    ``new(x, y) = old(R(-alpha) (x, y))``, the projection of ``in_plane_quaternion(alpha) * q``.

    ``images`` ``(M, N, N)`` or ``(N, N)``; ``alpha`` scalar or ``(M,)``. Exact (a pixel
    permutation) for multiples of pi/2, spline interpolation of ``order`` otherwise
    (zero outside the box). Returns float32.
    """
    images = np.asarray(images, dtype=np.float32)
    single = images.ndim == 2
    x = images[None] if single else images
    alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (len(x),))
    n = x.shape[-1]
    c = _centred_coords(n).astype(np.float64)
    gy, gx = np.meshgrid(c, c, indexing="ij")
    out = np.empty_like(x)
    for i, a in enumerate(alphas):
        k = a / (np.pi / 2)
        if abs(k - np.round(k)) < 1e-9:
            out[i] = _rotate_quarter(x[i], int(np.round(k)))
            continue
        ca, sa = np.cos(a), np.sin(a)
        xs = ca * gx + sa * gy + n // 2
        ys = -sa * gx + ca * gy + n // 2
        out[i] = ndi.map_coordinates(x[i], [ys, xs], order=order, mode="constant", cval=0.0)
    return out[0] if single else out


def apply_image_transform(images, g, order=3):
    """Apply the image-side transform ``g`` (a quaternion ``(4,)``: ``R_z(alpha)`` or
    ``R_z(alpha) MIRROR``, as ``recovery.image_transforms`` makes) to images ``(..., N, N)``:
    the result is the projection of ``g * q`` when the input is that of ``q`` (mirror
    ``y -> -y`` first, then rotation by ``alpha``; exact for multiples of pi/2)."""
    R = geometry.quaternion_to_matrix(np.asarray(g, dtype=np.float64))
    alpha = float(np.arctan2(R[1, 0], R[0, 0]))
    if abs(R[2, 2] - 1.0) < 1e-6:
        return rotate_images(images, alpha, order=order)
    if abs(R[2, 2] + 1.0) < 1e-6:
        return rotate_images(mirror_images(images), alpha, order=order)
    raise ValueError("g is not an image-side transform (a rotation about z, optionally "
                     "composed with the mirror)")


def crop_or_pad(images, size):
    """Centred crop or zero-pad of images ``(..., N, N)`` to ``(..., size, size)``; the
    centre ``N // 2`` lands on ``size // 2``. Pixel size unchanged."""
    return _crop_or_pad(np.asarray(images), int(size), 2)


def crop_or_pad_volume(volume, size):
    """``crop_or_pad`` for a volume ``(N, N, N)`` -> ``(size,) * 3``."""
    return _crop_or_pad(_check_cube(volume), int(size), 3)


def _crop_or_pad(arr, size, ndim):
    n = arr.shape[-1]
    if n == size:
        return arr.copy()
    out = np.zeros(arr.shape[:-ndim] + (size,) * ndim, dtype=arr.dtype)
    lo = min(n, size)
    src = n // 2 - lo // 2                        # first kept index in the source
    dst = size // 2 - lo // 2                     # where it goes
    lead = (Ellipsis,)
    out[lead + (slice(dst, dst + lo),) * ndim] = arr[lead + (slice(src, src + lo),) * ndim]
    return out


# ----------------------------------------------------------------------- the whole model

def simulate_particles(volume, n, image_size=None, symmetry="C1", max_shift=0.0, ctf=None,
                       sigma2=None, snr_db=None, seed=0, progress=None, voxel_size=1.0,
                       oversampling=2, interleave=True, batch_size=256, return_clean=True):
    """Simulate ``n`` particle images by eq. (1): ``p = C_phi S_t P_theta x + n``.

    Steps, per batch: orientations ``geometry.sample_orientations(n, symmetry)`` ->
    ``project`` (box ``N`` of the volume) -> ``downsample`` to ``image_size`` (pixel size
    becomes ``voxel_size * N / image_size``) -> shift by ``t`` and CTF, both on a
    zero-padded box (2x) then cropped, so neither wraps around (the particle sits at
    ``t`` in a micrograph, the CTF blurs the micrograph, the box is cut at the centre;
    shift and CTF commute) -> one global scale so the clean images have unit variance
    on average (mean over images of each image's pixel variance) -> white Gaussian noise.

    **Noise level**: ``sigma2`` is relative to those unit-variance clean images, so
    ``SNR = 1 / sigma2`` and ``snr_db = -10 log10(sigma2)`` (the paper's ``sigma^2 = 16`` is
    -12 dB). Give at most one of ``sigma2``, ``snr_db``; neither means noiseless.

    ``volume`` ``(N, N, N)`` (``pad_to_cube`` it first); ``oversampling``, ``interleave``:
    see ``prepare_volume``; ``voxel_size`` Angstrom (for the
    CTF); ``max_shift`` pixels of the output image (triangular distribution, per axis);
    ``ctf``: None (no CTF), True (``sample_ctf_params`` defaults), a dict of keywords of
    ``sample_ctf_params`` (e.g. ``defocus_range``), or a dict of per-particle parameters
    (with ``defocus_u``, as ``sample_ctf_params`` returns). Seeds of the four random
    draws (orientations, shifts, CTF, noise) derive from ``seed``.

    Returns a dict: ``images`` float32 ``(n, S, S)``; ``clean`` (same, before noise; None
    unless ``return_clean``); ``quaternions`` ``(n, 4)``; ``shifts`` ``(n, 2)`` pixels
    ``(tx, ty)``; ``ctf`` (dict of per-particle parameters) or None; ``pixel_size`` (A);
    ``scale`` (factor applied to the projections); ``sigma2``, ``snr_db`` (None if
    noiseless); ``symmetry``; ``seed``.
    """
    volume = _check_cube(volume)
    size = volume.shape[0]
    image_size = size if image_size is None else int(image_size)
    pixel_size = voxel_size * size / image_size
    s_orient, s_shift, s_ctf, s_noise = [int(s.generate_state(1)[0])
                                         for s in np.random.SeedSequence(seed).spawn(4)]
    quats = geometry.sample_orientations(n, symmetry, seed=s_orient)
    shifts = sample_shifts(n, max_shift, seed=s_shift)
    if ctf is None or ctf is False:
        ctf_params = None
    elif ctf is True:
        ctf_params = sample_ctf_params(n, seed=s_ctf)
    elif "defocus_u" in ctf:
        ctf_params = dict(ctf)
        if len(np.atleast_1d(ctf_params["defocus_u"])) not in (1, n):
            raise ValueError("ctf['defocus_u'] must have one value per particle")
    else:
        ctf_params = sample_ctf_params(n, seed=s_ctf, **ctf)
    if sigma2 is not None and snr_db is not None:
        raise ValueError("give at most one of sigma2 and snr_db")
    if snr_db is not None:
        sigma2 = float(snr_db_to_sigma2(snr_db))

    spec = prepare_volume(volume, oversampling, interleave=interleave)
    clean = np.empty((n, image_size, image_size), dtype=np.float32)
    per_particle = ("defocus_u", "defocus_v", "astig_angle", "phase_shift")
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        imgs = project(spec, quats[b0:b1])
        if image_size != size:
            imgs = downsample(imgs, image_size)
        params_b = None
        if ctf_params is not None:
            params_b = {k: (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,))[b0:b1]
                            if k in per_particle else v) for k, v in ctf_params.items()}
        if max_shift > 0 or params_b is not None:
            imgs = _filter_padded(imgs, shifts=shifts[b0:b1] if max_shift > 0 else None,
                                  ctf_params=params_b, pixel_size=pixel_size)
        clean[b0:b1] = imgs
        if progress is not None:
            progress(b1, n)
    var = float(np.mean(np.var(clean.reshape(n, -1), axis=1, dtype=np.float64))) if n else 1.0
    scale = 1.0 / np.sqrt(var) if var > 0 else 1.0
    clean *= np.float32(scale)
    if sigma2 is None:
        images = clean.copy() if return_clean else clean
    else:
        images = add_noise(clean, sigma2=sigma2, seed=s_noise)
    return dict(images=images, clean=clean if return_clean else None, quaternions=quats,
                shifts=shifts, ctf=ctf_params, pixel_size=pixel_size, scale=scale,
                sigma2=sigma2,
                snr_db=None if sigma2 is None else (float(sigma2_to_snr_db(sigma2)) if sigma2 > 0
                                                    else float("inf")),
                symmetry=symmetry, seed=seed)
