"""Simulated particles, paper eq. (1) at once: ``p = C_phi S_t P_theta x + n``.

``simulate_particles`` (orientations, shifts, CTF and noise drawn from seeds),
``sample_shifts``.

Conventions (indexing ``vol[z, y, x]`` / ``img[y, x]``, box centre ``N // 2``,
orientations, units) are those of ``geometry.py``.

The CTF's sign convention is Relion's (``ctf.py``).
"""
import numpy as np

from . import geometry
from .ctf import sample_ctf_params
from .image_ops import _filter_padded, add_noise, downsample, sigma2_to_snr_db, snr_db_to_sigma2
from .projection import prepare_volume, project
from .volumes import _check_cube

__all__ = [
    "sample_shifts", "simulate_particles",
]


def sample_shifts(n, max_shift, seed=0):
    """``(n, 2)`` shifts ``(tx, ty)`` in pixels, each from the symmetric triangular
    distribution on ``[-max_shift, max_shift]`` (the paper's choice)."""
    rng = np.random.default_rng(seed)
    if max_shift <= 0:
        return np.zeros((n, 2))
    return rng.triangular(-max_shift, 0.0, max_shift, size=(n, 2))


def simulate_particles(volume, n, image_size=None, symmetry="C1", max_shift=0.0, ctf=None,
                       sigma2=None, snr_db=None, seed=0, progress=None, voxel_size=1.0,
                       oversampling=2, interleave=True, batch_size=256, return_clean=True,
                       scale=None):
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
    (with ``defocus_u``, as ``sample_ctf_params`` returns). ``scale``: a fixed factor
    instead of the unit-variance one (a simulation streamed in chunks measures it on its
    first chunk and keeps it, ``pipeline.simulate_to_stack``). Seeds of the four random
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
    if scale is None:
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
                snr_db=None if sigma2 is None else float(sigma2_to_snr_db(sigma2)),
                symmetry=symmetry, seed=seed)
