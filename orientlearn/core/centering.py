"""Reference-free centring: each particle's offset from the box centre, with no map.

Projection is linear, so the centre of mass of a projection is the projection of the
object's centre of mass: ``com_i = t_i + (R_i c)_xy`` for a particle at offset ``t_i``
in orientation ``R_i`` of an object whose centre of mass is ``c`` from its box centre.
Taking ``com_i`` as the offset therefore puts every particle in one consistent frame
(the one centred on the object's centre of mass), whatever the views: no reference is
needed. A Gaussian low-pass and a CTF correction (Wiener, ``CTF / (CTF^2 + eps)``) keep
the centre of mass (both filters are even with non-zero integral); the sums run over a
soft disc of the particle's diameter around the current estimate, iterated, and are
divided by the median mass over the particles (every projection has the same mass),
which is far steadier than each particle's own.

Measured (5j0n, 116 px, CTF 1-3 um, offsets <= 4 px): exact without noise (0.02 px);
at SNR 1/16 the low frequencies that carry the centre of mass are mostly noise (the CTF
keeps ~10 % of them), and the estimate (~3 px median) is no better than none. Then the
offsets must come from the map: local refinement (``refinement.py``) searches them
against the first reconstruction, which is what makes them right.
"""
import time

import numpy as np
import scipy.fft as sfft

__all__ = ["centre_particles"]


def _filtered_images(particles, indices, r0, eps):
    """CTF-corrected, low-passed images ``(B, N, N)`` (real space, centre ``N // 2``)."""
    n = particles.size
    ky = sfft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1)
    lowpass = np.exp(-0.5 * (ky[:, None] ** 2 + kx[None, :] ** 2) / r0 ** 2).astype(np.float32)
    f = particles.spectra[indices] * lowpass
    if particles.ctfs is not None:
        c = particles.ctfs[indices]
        f *= c / (c * c + eps)
    return sfft.fftshift(sfft.irfft2(f, s=(n, n), workers=-1), axes=(-2, -1))


def centre_particles(particles, max_shift, diameter, n_iterations=5, low_pass=None,
                     wiener_constant=0.01, batch_size=256, progress=None):
    """Offsets ``(M, 2)`` px of particles' centres of mass from their box centres.

    ``particles``: ``alignment_search.ParticleSpectra`` (without a mask: the window
    follows the particle); ``max_shift``: px, the largest offset returned (radius);
    ``diameter``: px, the particle's diameter (the window); ``low_pass``: Gaussian
    radius in cycles per box (default ``4 N / diameter``); ``wiener_constant``: ``eps``
    of the CTF correction (the CTF is in [-1, 1]; near zero frequency it is about the
    amplitude contrast, ~0.1, so ``eps = 0.1`` kept a tenth of the mass but more of the
    first moment: small particles at fine pixel sizes were sent to ``max_shift``, 2.4 px
    off noiseless where 0.01 gives 0.06, benchmarks/unseen.py's proteins at 64 px);
    ``progress(done, total)``: particles
    over all passes. Returns ``(offsets (M, 2), info)``, ``info``: ``changes`` (median
    offset change per pass, px), ``seconds``.
    """
    start = time.perf_counter()
    m, n = len(particles), particles.size
    r0 = 4.0 * n / diameter if low_pass is None else float(low_pass)
    radius = diameter / 2.0
    coords = np.arange(n, dtype=np.float64) - n // 2
    offsets = np.zeros((m, 2))
    changes = []
    total = n_iterations * m
    for it in range(n_iterations):
        new = np.empty_like(offsets)
        sums = np.empty((m, 3))
        for b0 in range(0, m, batch_size):
            idx = np.arange(b0, min(m, b0 + batch_size))
            img = _filtered_images(particles, idx, r0, wiener_constant)
            dx = coords[None, None, :] - offsets[idx, 0, None, None]
            dy = coords[None, :, None] - offsets[idx, 1, None, None]
            edge = np.clip((np.sqrt(dx ** 2 + dy ** 2) - radius) / 3.0, 0.0, 1.0)
            g = img * (0.5 * (1.0 + np.cos(np.pi * edge)))
            sums[idx] = np.stack([g.sum(axis=(1, 2)),
                                  (g * coords[None, None, :]).sum(axis=(1, 2)),
                                  (g * coords[None, :, None]).sum(axis=(1, 2))], axis=1)
            if progress is not None:
                progress(it * m + idx[-1] + 1, total)
        mass = np.median(sums[:, 0])
        if not mass > 0:
            raise ValueError("the particles' mean density is not positive inside the "
                             "window: check the contrast (particles must be white, as "
                             "in RELION) and the diameter")
        new = sums[:, 1:] / mass
        length = np.linalg.norm(new, axis=1, keepdims=True)
        new *= np.minimum(1.0, max_shift / np.maximum(length, 1e-12))
        changes.append(float(np.median(np.linalg.norm(new - offsets, axis=1))))
        offsets = new
    return offsets, dict(changes=changes, seconds=time.perf_counter() - start)
