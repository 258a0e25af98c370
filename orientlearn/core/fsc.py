"""Fourier shell correlation, resolution, half-map FSC and handedness.

Orientations recovered from images are only defined up to a global rotation of the
object and its handedness. :func:`fsc_with_handedness` resolves the handedness by trying
the mirrored map; the global rotation must be aligned elsewhere (``core/alignment.py``
aligns orientation sets) before an FSC against a reference means anything.
"""
import numpy as np

from . import geometry
from .reconstruction import reconstruct_fourier

__all__ = [
    "fsc", "resolution_at", "half_map_fsc", "mirror_volume", "fsc_with_handedness",
]


def fsc(vol1, vol2, pixel_size=1.0):
    """Fourier shell correlation of two cubic volumes ``(N, N, N)``.

    Shell ``s`` holds the Fourier voxels with ``round(|k| N) == s``, ``s = 0 .. N // 2``.

    Returns:
        ``(frequencies (K,), values (K,))``: shell frequencies ``s / (N pixel_size)`` in
        1/A (1/pixel with the default) and FSC values, NaN for a shell without power.
    """
    vol1, vol2 = np.asarray(vol1, np.float64), np.asarray(vol2, np.float64)
    if vol1.shape != vol2.shape or vol1.ndim != 3 or len(set(vol1.shape)) != 1:
        raise ValueError(f"need two cubic volumes of the same shape, got {vol1.shape}, "
                         f"{vol2.shape}")
    for k, vol in enumerate((vol1, vol2)):
        if not np.all(np.isfinite(vol)):
            raise ValueError(f"FSC: map {k + 1} has {int((~np.isfinite(vol)).sum())} "
                             "non-finite voxel(s) (NaN/inf): no resolution can be measured.")
    n = vol1.shape[0]
    f1, f2 = np.fft.rfftn(vol1), np.fft.rfftn(vol2)
    k = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.rint(radius).astype(np.int64)
    # rfftn keeps kx >= 0: the columns kx = 1 .. (n-1)//2 stand for two voxels each.
    mult = np.full(kx.shape, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    mult = np.broadcast_to(mult, shell.shape)
    n_shells = n // 2 + 1
    inside = shell < n_shells
    s = shell[inside]
    cross = np.bincount(s, (mult * (f1 * np.conj(f2)).real)[inside], minlength=n_shells)
    p1 = np.bincount(s, (mult * np.abs(f1) ** 2)[inside], minlength=n_shells)
    p2 = np.bincount(s, (mult * np.abs(f2) ** 2)[inside], minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = cross / np.sqrt(p1 * p2)
    values[(p1 <= 0) | (p2 <= 0)] = np.nan
    frequencies = np.arange(n_shells) / (n * pixel_size)
    return frequencies, values


def resolution_at(frequencies, fsc_values, threshold=0.5):
    """Resolution (A, or pixels with unit pixel size) where the FSC first drops below
    ``threshold``, linearly interpolated between the two shells around the crossing.

    The DC shell is not tested (a NaN there, zero-mean maps, is ignored). A non-finite
    shell beyond DC means a map has no power there: nothing is known from it on, so the
    curve ends at the shell before it. If the curve never drops below the threshold,
    returns ``1 / f`` of its last shell (the Nyquist limit ``2 * pixel_size`` for an even
    box when every shell is finite): the data support at least that resolution. If no
    finite shell before the first one below the threshold is above it, returns inf (no
    resolution).

    Raises ``ValueError`` for an empty curve, mismatched lengths, or a curve with no
    finite value beyond DC (blank or NaN maps): an error, never a number.
    """
    f_all = np.asarray(frequencies, dtype=np.float64).ravel()
    v_all = np.asarray(fsc_values, dtype=np.float64).ravel()
    if len(f_all) != len(v_all):
        raise ValueError(f"FSC curve: {len(f_all)} frequencies but {len(v_all)} values.")
    beyond_dc = np.isfinite(f_all) & (f_all > 0)
    if not np.any(beyond_dc & np.isfinite(v_all)):
        raise ValueError("The FSC curve is empty or has no finite value beyond the DC shell "
                         "(blank, constant or NaN maps?): no resolution can be measured.")
    gaps = np.flatnonzero(beyond_dc & ~np.isfinite(v_all))
    end = gaps[0] if len(gaps) else len(f_all)          # the curve ends before a gap
    ok = np.isfinite(v_all[:end]) & np.isfinite(f_all[:end])
    f, v = f_all[:end][ok], v_all[:end][ok]
    below = np.flatnonzero((v < threshold) & (f > 0))
    if len(below) == 0:
        last = f.max(initial=0.0)
        return float(1.0 / last) if last > 0 else float("inf")
    i = below[0]
    if i == 0 or v[i - 1] < threshold:          # no shell above the threshold before it
        return float("inf")
    f0, f1, v0, v1 = f[i - 1], f[i], v[i - 1], v[i]
    crossing = f0 + (v0 - threshold) * (f1 - f0) / (v0 - v1)
    return float(1.0 / crossing) if crossing > 0 else float("inf")


def half_map_fsc(images, rotations, shifts=None, ctfs=None, symmetry="C1", pixel_size=1.0,
                 seed=0, progress=None, **kwargs):
    """Gold-standard FSC: reconstruct two random halves of the particles separately.

    ``kwargs`` go to :func:`reconstruct_fourier` (``mask_radius``, ``oversampling``...).
    ``ctfs`` must be an array (split with the images) or None. The same seed gives the
    same split. ``progress(done, total)`` counts images over both halves.

    Returns:
        ``(half1, half2, frequencies, fsc_values)``: two ``(N, N, N)`` float32 maps and
        the curve from :func:`fsc`.
    """
    images = np.asarray(images)
    n_images = len(images)
    rotations = geometry.as_rotation_matrices(rotations)
    order = np.random.default_rng(seed).permutation(n_images)
    halves = [np.sort(order[: n_images // 2]), np.sort(order[n_images // 2:])]
    maps = []
    for h, idx in enumerate(halves):
        done = 0 if h == 0 else len(halves[0])
        report = None if progress is None else (
            lambda d, t, done=done: progress(done + d, n_images))
        maps.append(reconstruct_fourier(
            images[idx], rotations[idx], shifts=None if shifts is None else np.asarray(shifts)[idx],
            ctfs=None if ctfs is None else np.asarray(ctfs)[idx], symmetry=symmetry,
            progress=report, **kwargs))
    frequencies, values = fsc(maps[0], maps[1], pixel_size)
    return maps[0], maps[1], frequencies, values


def mirror_volume(vol):
    """The volume mirrored ``z -> -z`` about the box centre (index ``N // 2``).

    Reconstructing with orientations ``J R J`` (``J = diag(1, 1, -1)``), the other
    handedness, gives exactly this map. ``vol[::-1]`` alone would also move the centre by
    one voxel in an even box.
    """
    vol = np.asarray(vol)
    flipped = vol[::-1]
    return np.roll(flipped, 1, axis=0) if vol.shape[0] % 2 == 0 else flipped


def fsc_with_handedness(vol, reference, pixel_size=1.0):
    """FSC of ``vol`` against ``reference``, trying both handednesses of ``vol``.

    Orientations recovered from images are defined only up to a global rotation and the
    handedness; this resolves the handedness (the better of ``vol`` and
    :func:`mirror_volume` ``(vol)`` by mean FSC over the non-DC shells). A global rotation
    is NOT searched: align the orientations first (``core/alignment.py``).

    Returns:
        ``(frequencies, fsc_values, flipped)``; ``flipped`` is True when the mirrored
        volume matched better.
    """
    freq, direct = fsc(vol, reference, pixel_size)
    _, mirrored = fsc(mirror_volume(vol), reference, pixel_size)
    flipped = np.nanmean(mirrored[1:]) > np.nanmean(direct[1:])
    return freq, (mirrored if flipped else direct), bool(flipped)
