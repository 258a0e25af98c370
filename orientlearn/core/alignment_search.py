"""Fourier-space alignment of particles to model projections: band-limited, CTF-aware
cross-correlation over in-plane shifts, with sub-pixel peaks.

Conventions (``geometry.py``): an image ``img[y, x]`` of ``N`` pixels has its centre at
index ``N // 2``; its spectrum is ``X = rfft2(ifftshift(img))`` (half plane, ``(N, N // 2
+ 1)``, rows ``ky = fftfreq(N) N``, columns ``kx = 0 .. N // 2``, frequencies in cycles per
box). A particle whose centre sits at box centre + ``t`` (pixels) has
``X(k) = CTF(k) P(k) exp(-2 pi i k.t / N) + noise``, with ``P`` the spectrum of the
projection (the central slice of the map's spectrum, Fourier-slice theorem).

Score of a model ``P`` at shift ``t``: the normalised cross-correlation over a band of
frequencies ``r_min <= |k| <= r_max`` (the half plane counts the columns ``kx > 0``
twice, for their conjugate mates)::

    score(t) = sum_k w_k Re[conj(X_k) CTF_k P_k exp(-2 pi i k.t / N)] / ||CTF P||_w

which, for white noise, is the likelihood of ``t`` after the best scale of ``P``
(the particle's own norm is the same for every candidate and is left out). Peaks are
found on a grid of shifts (a matrix product with precomputed phase ramps) and made
sub-pixel by Newton steps on the analytic score (gradient and Hessian are sums over the
band), so the accuracy does not depend on the grid.
"""
import dataclasses

import numpy as np
import scipy.fft as sfft

from . import projection
from .ctf import ctf_2d_batch

__all__ = ["Band", "make_band", "ParticleSpectra", "slice_values", "shift_phases",
           "shift_grid", "grid_search_shifts", "refine_shifts", "search_shifts"]


@dataclasses.dataclass(frozen=True)
class Band:
    """The frequencies ``r_min <= |k| <= r_max`` of an ``N``-pixel image's half plane.

    ``flat``: ``(K,)`` indices into the flattened ``(N, N // 2 + 1)`` half plane; ``kx``,
    ``ky``: ``(K,)`` float32 frequencies in cycles per box; ``radius``: ``(K,)`` ``|k|``;
    ``weight``: ``(K,)`` float32, 2 for every kept sample (each stands for its conjugate
    mate too: the ``kx = 0`` column keeps ``ky > 0`` only); ``size``: ``N``; ``r_max``,
    ``r_min``: the limits.
    """
    flat: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    radius: np.ndarray
    weight: np.ndarray
    size: int
    r_max: float
    r_min: float

    def __len__(self):
        return len(self.flat)


def make_band(size, r_max, r_min=1.0):
    """The ``Band`` of an ``size``-pixel image between radii ``r_min`` and ``r_max``
    (cycles per box; ``r_max`` is capped below Nyquist, ``size / 2 - 1``)."""
    size = int(size)
    r_max = float(min(r_max, size / 2.0 - 1.0))
    ky = sfft.fftfreq(size) * size
    kx = np.arange(size // 2 + 1, dtype=np.float64)
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    R = np.hypot(KX, KY)
    inside = (R <= r_max) & (R >= r_min)
    # kx = 0: keep ky > 0 only, the ky < 0 half is the conjugate of it (weight 2 then).
    inside &= ~((KX == 0) & (KY < 0))
    flat = np.flatnonzero(inside.ravel())
    kxb, kyb = KX.ravel()[flat], KY.ravel()[flat]
    weight = np.full(len(flat), 2.0, dtype=np.float32)
    return Band(flat=flat, kx=kxb.astype(np.float32), ky=kyb.astype(np.float32),
                radius=R.ravel()[flat].astype(np.float32), weight=weight, size=size,
                r_max=r_max, r_min=float(r_min))


def soft_disc_mask(size, radius, width=3.0):
    """Circular mask ``(size, size)`` float32: 1 inside ``radius`` px of the centre
    (index ``size // 2``), a raised-cosine edge over ``width`` px, 0 beyond."""
    c = np.arange(size) - size // 2
    r = np.hypot(c[:, None], c[None, :])
    edge = np.clip((r - radius) / max(width, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * edge))).astype(np.float32)


class ParticleSpectra:
    """The half-plane spectra of a stack of particles and their CTFs, computed once.

    ``images``: ``(M, N, N)``; ``ctf``: None or a dict of ``ctf_2d_batch``
    keywords with per-particle arrays (``defocus_u``, ``defocus_v``, ``astig_angle``) and
    scalars (``voltage``, ``cs``, ``amplitude_contrast``, optional ``phase_shift``);
    ``pixel_size``: Angstrom (for the CTF); ``mask_radius``: soft circular mask (px)
    applied before the transform (None: none). Memory: ``M N (N / 2 + 1)`` complex64 plus
    as many float32 for the CTFs.

    Attributes: ``size`` (N), ``spectra`` ``(M, N, N // 2 + 1)`` complex64, ``ctfs``
    (same shape, float32) or None, ``pixel_size``.
    """

    def __init__(self, images, pixel_size=1.0, ctf=None, mask_radius=None, chunk=256):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (M, N, N), got {images.shape}")
        self.size = n = images.shape[-1]
        self.pixel_size = float(pixel_size)
        m = len(images)
        mask = None if mask_radius is None else soft_disc_mask(n, mask_radius)
        self.spectra = np.empty((m, n, n // 2 + 1), dtype=np.complex64)
        for b0 in range(0, m, chunk):
            block = images[b0:b0 + chunk]
            if mask is not None:
                block = block * mask
            self.spectra[b0:b0 + chunk] = sfft.rfft2(sfft.ifftshift(block, axes=(-2, -1)),
                                                     workers=-1)
        self.ctfs = None
        if ctf is not None:
            self.ctfs = np.empty((m, n, n // 2 + 1), dtype=np.float32)
            keys = ("defocus_u", "defocus_v", "astig_angle")
            scalars = {k: v for k, v in ctf.items() if k not in keys and k != "phase_shift"}
            phase = np.broadcast_to(np.asarray(ctf.get("phase_shift", 0.0), np.float64), (m,))
            per = [np.broadcast_to(np.asarray(ctf[k], dtype=np.float64), (m,)) for k in keys]
            for b0 in range(0, m, chunk):
                sl = slice(b0, b0 + chunk)
                full = ctf_2d_batch(n, pixel_size, per[0][sl], per[1][sl], per[2][sl],
                                            phase_shift=phase[sl], **scalars)
                self.ctfs[sl] = full[..., : n // 2 + 1]

    def __len__(self):
        return len(self.spectra)

    def band_values(self, indices, band):
        """``(X (B, K) complex64, CTF (B, K) float32 or ones)`` of particles ``indices``."""
        x = self.spectra[indices].reshape(len(indices), -1)[:, band.flat]
        if self.ctfs is None:
            return x, np.ones(x.shape, dtype=np.float32)
        return x, self.ctfs[indices].reshape(len(indices), -1)[:, band.flat]


def slice_values(spectrum, rotations, band):
    """Spectra of the projections of a prepared map on a band: ``(..., K)`` complex64.

    ``spectrum``: ``projection.VolumeSpectrum`` of a map of the images' box ``N``;
    ``rotations``: ``(..., 3, 3)``; see ``projection.slice_spectra``.
    """
    R = np.asarray(rotations)
    vals = projection.slice_spectra(spectrum, R.reshape(-1, 3, 3), band.kx, band.ky)
    return vals.reshape(R.shape[:-2] + (len(band),))


def shift_phases(band, shifts):
    """``exp(-2 pi i k.t / N)`` ``(..., K)`` complex64 for shifts ``t (..., 2)`` px: the
    factor that moves an image's content by ``t``."""
    t = np.asarray(shifts, dtype=np.float64)
    arg = (-2.0 * np.pi / band.size) * (t[..., 0, None] * band.kx + t[..., 1, None] * band.ky)
    return np.exp(1j * arg).astype(np.complex64)


def shift_grid(half_range, step):
    """Offsets ``(T, 2)`` px on a square grid of ``step`` within ``[-half_range, half_range]``
    per axis (always containing 0)."""
    n = int(np.floor(half_range / step + 1e-9))
    a = np.arange(-n, n + 1) * float(step)
    gx, gy = np.meshgrid(a, a, indexing="xy")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _norms(model, ctf, band, filt=None):
    """``||CTF filt P||_w`` over the band: ``(..., )`` float32 (never 0)."""
    a = np.abs(model) ** 2 * (ctf ** 2 if filt is None else (ctf * filt) ** 2)
    return np.sqrt(np.maximum(a @ band.weight, 1e-30)).astype(np.float32)


def grid_search_shifts(cross, norms, band, offsets):
    """Scores of every candidate at every grid offset and the best of them.

    ``cross``: ``(B, C, K)`` complex, ``w conj(X) CTF P`` already moved to the centre of
    the search (see ``search_shifts``); ``norms``: ``(B, C)``; ``offsets``: ``(T, 2)`` px.
    Returns ``(scores (B, C, T) float32, best_candidate (B,), best_offset (B, 2))``.
    """
    phases = shift_phases(band, offsets).T                       # (K, T)
    b, c, k = cross.shape
    scores = np.matmul(cross.reshape(b * c, k), phases).real.reshape(b, c, len(offsets))
    scores /= norms[..., None]
    flat = scores.reshape(b, -1).argmax(axis=1)
    cand, off = np.unravel_index(flat, (c, len(offsets)))
    return scores, cand, offsets[off]


def refine_shifts(cross, norm, band, start, n_steps=6, max_step=0.5):
    """Sub-pixel peaks of the score by Newton steps from ``start``.

    ``cross``: ``(B, K)`` complex ``w conj(X) CTF P``; ``norm``: ``(B,)``; ``start``:
    ``(B, 2)`` px. The score ``s(t) = Re sum cross exp(-2 pi i k.t / N) / norm`` has
    gradient ``(2 pi / N) sum k Im(z)`` and Hessian ``-(2 pi / N)^2 sum k k^T Re(z)``
    (``z`` the summands); where the Hessian is not negative definite a gradient step is
    taken instead. Steps are capped at ``max_step`` px. Returns ``(shifts (B, 2),
    scores (B,))``.
    """
    t = np.array(start, dtype=np.float64)
    kx = band.kx.astype(np.float64)
    ky = band.ky.astype(np.float64)
    c = 2.0 * np.pi / band.size
    cross = np.asarray(cross, dtype=np.complex128)
    for _ in range(n_steps):
        z = cross * np.exp(-1j * c * (t[:, 0, None] * kx + t[:, 1, None] * ky))
        im, re = z.imag, z.real
        g = c * np.stack([im @ kx, im @ ky], axis=1)
        hxx = -c * c * (re @ (kx * kx))
        hyy = -c * c * (re @ (ky * ky))
        hxy = -c * c * (re @ (kx * ky))
        det = hxx * hyy - hxy * hxy
        concave = (hxx < 0) & (det > 0)
        safe = np.where(concave, det, 1.0)
        step = np.where(concave[:, None],
                        -np.stack([hyy * g[:, 0] - hxy * g[:, 1],
                                   -hxy * g[:, 0] + hxx * g[:, 1]], axis=1) / safe[:, None],
                        g / np.maximum(np.abs(g).max(axis=1, keepdims=True), 1e-30) * max_step)
        length = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, max_step / np.maximum(length, 1e-30))
        t += step
        if np.all(length < 1e-4):
            break
    z = cross * np.exp(-1j * c * (t[:, 0, None] * kx + t[:, 1, None] * ky))
    return t, (z.real.sum(axis=1) / norm).astype(np.float32)


def search_shifts(particles, indices, model, band, centre=None, half_range=3.0, step=1.0,
                  filt=None):
    """Best shift of each particle against its model projection: grid, then Newton.

    ``particles``: ``ParticleSpectra``; ``indices``: ``(B,)``; ``model``: ``(B, K)``
    spectra of the model projections on ``band`` (e.g. ``slice_values``); ``centre``:
    ``(B, 2)`` px around which to search (default 0); ``half_range``/``step``: the grid
    (px); ``filt``: optional ``(K,)`` weights of the model (a low-pass).
    Returns ``(shifts (B, 2) px, scores (B,))``: normalised cross-correlations.
    """
    indices = np.asarray(indices)
    x, ctf = particles.band_values(indices, band)
    centre = np.zeros((len(indices), 2)) if centre is None else np.asarray(centre, np.float64)
    model = np.asarray(model, dtype=np.complex64)
    if filt is not None:
        model = model * filt
    cross = band.weight * np.conj(x) * ctf * model
    norms = _norms(model, ctf, band)
    moved = cross * shift_phases(band, centre)
    _, _, best = grid_search_shifts(moved[:, None, :], norms[:, None], band,
                                    shift_grid(half_range, step))
    return refine_shifts(cross, norms, band, centre + best)
