"""Projection ``P_theta`` of the imaging model ``p = C_phi S_t P_theta x + n`` (paper eq. 1).

``project`` (CPU, Fourier-slice theorem, on a ``VolumeSpectrum`` from
``prepare_volume``), ``project_astra`` (GPU, ASTRA), ``real_space_project`` (slow
reference for tests).

Conventions (indexing ``vol[z, y, x]`` / ``img[y, x]``, box centre ``N // 2``,
orientations, units) are those of ``geometry.py``.
"""
import dataclasses

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from . import geometry
from .image_ops import _centred_coords, _even_fast_len
from .volumes import _check_cube

__all__ = [
    "VolumeSpectrum", "prepare_volume", "project", "slice_spectra", "project_astra",
    "has_cuda", "real_space_project", "astra_vectors",
]


@dataclasses.dataclass(frozen=True)
class VolumeSpectrum:
    """The 3-D spectrum of a volume, ready for ``project`` (``prepare_volume`` makes it).

    ``spectrum``: complex64 ``(Np + 4,) * 3``, zero frequency at index ``Np // 2 + 2``
    (``fftshift`` order, wrapped by 2 samples on every side so the interpolation stencil
    never leaves the array); ``spectrum_half_shift``: same, sampled on the grid shifted by
    half a sample along every axis (or None); ``size``: ``N`` of the volume;
    ``padded_size``: ``Np``;
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


def _central_slices(spec, R, kx, ky):
    """Spectrum values ``(B, K)`` complex64 of ``spec`` (a ``VolumeSpectrum``) at
    ``R^T (kx, ky, 0)`` for rotations ``R`` ``(B, 3, 3)`` float32 and frequencies ``kx``,
    ``ky`` ``(K,)`` float32 in padded-spectrum index units: trilinear, averaged with the
    half-sample-shifted spectrum when there is one (interleaving)."""
    m1 = spec.spectrum.shape[0]
    centre = np.float32(spec.padded_size // 2 + _WRAP)
    # R^T (kx, ky, 0) = kx * row0(R) + ky * row1(R), components (x, y, z)
    X = kx * R[:, 0, 0, None] + ky * R[:, 1, 0, None]
    Y = kx * R[:, 0, 1, None] + ky * R[:, 1, 1, None]
    Z = kx * R[:, 0, 2, None] + ky * R[:, 1, 2, None]
    vals = _interp_trilinear(spec.spectrum.reshape(-1), m1, centre, X, Y, Z)
    if spec.spectrum_half_shift is not None:
        vals += _interp_trilinear(spec.spectrum_half_shift.reshape(-1), m1,
                                  centre - np.float32(0.5), X, Y, Z)
        vals *= np.float32(0.5)
    return vals


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
    R = geometry.as_rotation_matrices(rotations).astype(np.float32)
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
        vals = _central_slices(spec, Rb, kx, ky)
        h = half[:nb]
        h.reshape(nb, -1)[:, flat_idx] = vals
        imgs = sfft.irfft2(h, s=(grid, grid), workers=-1)
        imgs = sfft.fftshift(imgs, axes=(-2, -1))
        out[b0:b0 + nb] = imgs[:, start:start + n, start:start + n]
        if progress is not None:
            progress(b0 + nb, total)
    return out


def slice_spectra(spectrum, rotations, kx, ky, chunk=32):
    """Central-slice values of a prepared map at image frequencies: ``(M, K)`` complex64.

    ``spectrum``: a ``VolumeSpectrum`` of an ``N``-voxel map; ``rotations``: ``(M, 3, 3)``;
    ``kx``, ``ky``: ``(K,)`` frequencies in cycles per ``N``-pixel image. The values are
    those ``project`` puts on its grid (the spectrum at ``R^T (kx, ky, 0)``, trilinear,
    interleaved if prepared so): ``rfft2(ifftshift(project(...)))`` at those frequencies
    when the map fits in the box's inscribed sphere. ``chunk`` rotations are
    interpolated at a time (nearby slices reuse the cache).
    """
    R = np.asarray(rotations, dtype=np.float32).reshape(-1, 3, 3)
    scale = np.float32(spectrum.padded_size / spectrum.size)
    kx = np.asarray(kx, np.float32) * scale
    ky = np.asarray(ky, np.float32) * scale
    out = np.empty((len(R), len(kx)), dtype=np.complex64)
    for c0 in range(0, len(R), chunk):
        out[c0:c0 + chunk] = _central_slices(spectrum, R[c0:c0 + chunk], kx, ky)
    return out


def has_cuda():
    """True if ASTRA is importable and sees a CUDA device."""
    try:
        import astra
        return bool(astra.use_cuda())
    except Exception:
        return False


def astra_vectors(rotations, size, shifts=None):
    """ASTRA ``parallel3d_vec`` vectors ``(M, 12)`` for orientations ``rotations``
    (``(M, 3, 3)`` or quaternions ``(M, 4)``), a ``size``-pixel square detector and
    optional particle shifts ``(M, 2)`` ``(tx, ty)`` pixels, for a volume geometry whose
    voxel ``i`` (per axis) is at world coordinate ``i - size // 2`` (``project_astra``,
    ``reconstruction.reconstruct_astra``).

    ASTRA's row ``(ray, d, u, v)``: ray direction, detector centre, and the vectors from
    detector pixel (0, 0) to (0, 1) (``u``, along columns = our x) and to (1, 0) (``v``,
    along rows = our y), all in world ``(x, y, z)``. Our pixel ``(x, y)`` (relative to the
    box centre) sees the line ``R^T (x - tx, y - ty, t)``: so ray = ``R^T e_z``,
    u = ``R^T e_x``, v = ``R^T e_y`` (rows of ``R``). ASTRA's detector centre lies between
    pixels for an even size, half a pixel from our centre pixel ``size // 2``, and moves
    by ``-t``: hence ``d``.
    """
    R = geometry.as_rotation_matrices(rotations)
    u, v, ray = R[:, 0, :], R[:, 1, :], R[:, 2, :]
    delta = size // 2 - (size - 1) / 2.0           # 0.5 for even sizes, 0 for odd
    t = np.zeros((len(R), 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    d = -(delta + t[:, :1]) * u - (delta + t[:, 1:2]) * v
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


def real_space_project(volume, rotation, order=3):
    """Slow reference: sample ``V(R^T (x, y, z))`` on the box grid by spline
    interpolation (``order``) and sum over ``z``. ``rotation``: ``(3, 3)`` or ``(4,)``.
    Only content inside the box after rotation counts. Returns float32 ``(N, N)``."""
    volume = _check_cube(volume).astype(np.float64)
    n = volume.shape[0]
    R = geometry.as_rotation_matrices(rotation)[0]
    c = _centred_coords(n).astype(np.float64)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z])                        # (3, N, N, N) rotated-frame (x, y, z)
    s = np.einsum("ij,i...->j...", R, r)          # R^T r, volume-frame (x, y, z)
    coords = np.stack([s[2], s[1], s[0]]) + n // 2
    vals = ndi.map_coordinates(volume, coords.reshape(3, -1), order=order, mode="constant",
                               cval=0.0).reshape(n, n, n)
    return vals.sum(axis=0).astype(np.float32)
