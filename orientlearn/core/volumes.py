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
