"""Operations on image stacks ``(M, N, N)``: shifts and CTF filtering (``S_t``,
``C_phi``), noise and SNR (``n``), Fourier downsampling, normalisation, the exact
image-plane transforms (mirror, quarter turns) and in-plane rotation, crop or pad.

Conventions (indexing ``vol[z, y, x]`` / ``img[y, x]``, box centre ``N // 2``,
orientations, units) are those of ``geometry.py``.
"""
import threading

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi
import scipy.signal

from . import geometry
from .ctf import _CTFMaker
from .threads import run_chunks

__all__ = [
    "shift_images", "add_noise", "snr_db_to_sigma2", "sigma2_to_snr_db", "downsample",
    "normalize_images", "rotate_images", "mirror_images", "apply_image_transform",
    "rotate_quarter_turns", "transform_images", "transform_quaternion",
    "image_transform_quaternion",
    "crop_or_pad",
]


def _centred_coords(n):
    return np.arange(n) - n // 2


def _even_fast_len(n):
    n = sfft.next_fast_len(int(n))
    while n % 2:
        n = sfft.next_fast_len(n + 1)
    return n


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
    small chunks on ``threads.thread_count()`` threads (results do not depend on either)."""
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
            ramp_x = np.exp((-2j * np.pi) * shifts[b0:b1, 0, None] * kx).astype(np.complex64)
            fx *= ramp_x[:, None, :]
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
            ramp_y = np.exp((-2j * np.pi) * shifts[b0:b1, 1, None] * ky).astype(np.complex64)
            f *= ramp_y[:, :, None]
        f = sfft.ifft(f, axis=-2, workers=1, overwrite_x=True)
        kept = np.concatenate([f[:, P - c:], f[:, :r]], axis=1)   # the N rows of the crop
        res = sfft.irfft(kept, n=P, axis=-1, workers=1)           # (k, N, P) float32
        out[b0:b1, :, :c] = res[:, :, P - c:]
        out[b0:b1, :, c:] = res[:, :, :r]

    run_chunks(m, chunk, work)
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


def snr_db_to_sigma2(snr_db, signal_variance=1.0):
    """Noise variance ``sigma^2`` giving ``snr_db = 10 log10(signal_variance / sigma^2)``
    (scalar or array). ``simulate_particles`` scales clean projections to unit variance,
    so the default ``signal_variance = 1`` is what its (and the wizard's) noise means."""
    out = signal_variance * 10.0 ** (-np.asarray(snr_db, dtype=np.float64) / 10.0)
    return out[()]


def sigma2_to_snr_db(sigma2, signal_variance=1.0):
    """Inverse of ``snr_db_to_sigma2``: SNR in dB, ``+inf`` where ``sigma2 <= 0``."""
    s = np.asarray(sigma2, dtype=np.float64)
    positive = s > 0
    out = np.full(s.shape, np.inf)
    out[positive] = 10.0 * np.log10(signal_variance / s[positive])
    return out[()]


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


def rotate_quarter_turns(images, k):
    """Exact rotation of images ``(..., N, N)`` by ``k`` quarter turns counter-clockwise
    in ``(x, y)`` about the pixel ``(N // 2, N // 2)`` (a pixel permutation; for even
    ``N`` the first row / column wraps): the projection of
    ``in_plane_quaternion(k pi / 2) * q`` when the input is that of ``q``. Same dtype."""
    img = np.asarray(images)
    k = int(k) % 4
    if k == 0:
        return img.copy()
    if k == 2:
        return _centred_flip(_centred_flip(img, -1), -2)
    t = np.swapaxes(img, -1, -2)
    # k = 1: new[y, x] = old[-x, y];  k = 3: new[y, x] = old[x, -y]
    return np.ascontiguousarray(_centred_flip(t, -1 if k == 1 else -2))


def image_transform_quaternion(k, mirror):
    """The image-side transform ``g = R_z(k pi / 2) [MIRROR]`` (quaternions ``(..., 4)``;
    ``k`` int or array, ``mirror`` bool or array, broadcast) of ``transform_images``:
    mirror ``y -> -y`` first when ``mirror``, then ``k`` quarter turns counter-clockwise
    (the transforms of ``graph.image_transforms(4)`` are ``k = 0..3`` without, then with
    the mirror)."""
    g = geometry.in_plane_quaternion(np.asarray(k, dtype=np.float64) * np.pi / 2)
    gm = geometry.multiply(g, geometry.MIRROR_QUATERNION)
    return np.where(np.asarray(mirror, bool)[..., None], gm, g)


def transform_quaternion(q, k, mirror):
    """Quaternions ``g q`` ``(..., 4)`` of the images ``transform_images(p, k, mirror)``
    when ``p`` is the projection of ``q`` (``g = image_transform_quaternion(k, mirror)``)."""
    return geometry.multiply(image_transform_quaternion(k, mirror), q)


def transform_images(images, k, mirror):
    """Images ``(..., N, N)`` mirrored ``y -> -y`` (if ``mirror``), then turned by ``k``
    quarter turns counter-clockwise; exact, same dtype. The projection of
    ``transform_quaternion(q, k, mirror)`` when the input is that of ``q``."""
    images = mirror_images(images) if mirror else np.asarray(images)
    return rotate_quarter_turns(images, k)


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
            out[i] = rotate_quarter_turns(x[i], int(np.round(k)))
            continue
        ca, sa = np.cos(a), np.sin(a)
        xs = ca * gx + sa * gy + n // 2
        ys = -sa * gx + ca * gy + n // 2
        out[i] = ndi.map_coordinates(x[i], [ys, xs], order=order, mode="constant", cval=0.0)
    return out[0] if single else out


def apply_image_transform(images, g, order=3):
    """Apply the image-side transform ``g`` (a quaternion ``(4,)``: ``R_z(alpha)`` or
    ``R_z(alpha) MIRROR``, as ``graph.image_transforms`` makes) to images ``(..., N, N)``:
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
