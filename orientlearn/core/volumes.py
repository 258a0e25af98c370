"""Volumes: read an MRC map, pad it to a cube, Fourier-downsample, crop or pad.

Conventions (indexing ``vol[z, y, x]`` / ``img[y, x]``, box centre ``N // 2``,
orientations, units) are those of ``geometry.py``.
"""
import os
import warnings

import numpy as np

from .image_ops import _crop_or_pad, _resample

__all__ = [
    "read_volume", "pad_to_cube", "downsample_volume", "crop_or_pad_volume",
    "resample_to_grid", "low_pass",
]


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


def downsample_volume(volume, new_size):
    """``downsample`` for a volume ``(N, N, N)`` -> ``(new_size,) * 3``."""
    return _resample(_check_cube(volume), int(new_size), axes=(0, 1, 2))


def crop_or_pad_volume(volume, size):
    """``crop_or_pad`` for a volume ``(N, N, N)`` -> ``(size,) * 3``."""
    return _crop_or_pad(_check_cube(volume), int(size), 3)


def resample_to_grid(volume, voxel_size, size, pixel_size):
    """A cubic map ``(N, N, N)`` at ``voxel_size`` (A) Fourier-resampled to ``pixel_size``
    and cropped or zero-padded (about the centre ``N // 2``) to ``(size,) * 3`` float32.

    The same numbers as resampling the whole map to ``M = round(N voxel_size /
    pixel_size)`` voxels (:func:`downsample_volume`) and cropping it to ``size``,
    without ever holding the ``M^3`` map: resampling is linear along each axis, so each
    axis is multiplied by the ``(size, N)`` rows of the resampling matrix that the output
    box keeps. Memory is of the order of ``size * N^2`` (output and input boxes), whatever
    the ratio of the pixel sizes.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"expected a cubic volume (N, N, N), got shape {vol.shape}")
    n, size = vol.shape[0], int(size)
    new = max(1, int(round(n * float(voxel_size) / float(pixel_size))))
    weights = _resampling_rows(n, new, size)                 # (size, n)
    for axis in range(3):
        vol = np.moveaxis(np.tensordot(weights, vol, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(vol, dtype=np.float32)


def low_pass(volume, voxel_size, resolution):
    """Gaussian low-pass of a cubic map ``(N, N, N)`` (``voxel_size`` A) whose amplitude
    is 1/2 at the spatial frequency ``1 / resolution`` (A^-1), 1/16 at twice it.

    A Gaussian rather than a hard cut-off: no ringing, so a "25 A map" looks like one
    (as RELION's initial low-pass of a reference). Returns float32 ``(N, N, N)``."""
    vol = np.asarray(_check_cube(volume), dtype=np.float32)
    n = vol.shape[0]
    k = np.fft.fftfreq(n, d=float(voxel_size))            # A^-1
    kz = np.fft.rfftfreq(n, d=float(voxel_size))
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    # exp(-k^2 / 2 s^2) = 1/2 at k = 1/resolution.
    s2 = (1.0 / float(resolution)) ** 2 / (2.0 * np.log(2.0))
    f = np.fft.rfftn(vol) * np.exp(-0.5 * k2 / s2)
    return np.fft.irfftn(f, s=vol.shape).astype(np.float32)


def _resampling_rows(n, new, size):
    """``(size, n)`` float32 matrix ``W``: ``W @ x`` is ``x (n,)`` Fourier-resampled to
    ``new`` samples (centre ``n // 2`` kept on ``new // 2``, values preserved, as
    ``image_ops.downsample``) then cropped or zero-padded to ``size`` about the centre."""
    import scipy.fft as sfft
    import scipy.signal
    if new == n:
        full = np.eye(n)
    else:
        # Resampling is linear: apply it to the identity, column j = the image of e_j.
        full = sfft.fftshift(scipy.signal.resample(sfft.ifftshift(np.eye(n), axes=0), new,
                                                   axis=0), axes=0)
    return _crop_or_pad_axis(full, size, 0).astype(np.float32)


def _crop_or_pad_axis(arr, size, axis):
    """Crop or zero-pad ``arr`` along ``axis`` to ``size``, keeping the centre
    ``n // 2`` on ``size // 2`` (the convention of ``image_ops.crop_or_pad``)."""
    n = arr.shape[axis]
    if n == size:
        return arr
    shape = list(arr.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=arr.dtype)
    keep = min(n, size)
    src, dst = n // 2 - keep // 2, size // 2 - keep // 2
    index_out = [slice(None)] * arr.ndim
    index_in = [slice(None)] * arr.ndim
    index_out[axis] = slice(dst, dst + keep)
    index_in[axis] = slice(src, src + keep)
    out[tuple(index_out)] = arr[tuple(index_in)]
    return out
