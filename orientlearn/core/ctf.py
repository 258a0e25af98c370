"""Contrast transfer function ``C_phi`` of the imaging model (paper eq. 1).

``ctf_2d``, ``ctf_2d_batch``, ``apply_ctf``, ``sample_ctf_params``,
``electron_wavelength``.

CTF sign convention (Relion's, "particles are white"): ``CTF(k) = sin(chi(k))`` with
``chi(k) = pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + phase_shift + arcsin(A)``, so
``CTF(0) = A`` (the amplitude contrast, > 0) and the CTF is positive over its first lobe
for an underfocused image (``df > 0``).

Conventions (indexing ``vol[z, y, x]`` / ``img[y, x]``, box centre ``N // 2``,
orientations, units) are those of ``geometry.py``.
"""
import functools

import numpy as np
import scipy.fft as sfft

from .threads import run_chunks

__all__ = [
    "electron_wavelength", "ctf_2d", "ctf_2d_batch", "apply_ctf", "sample_ctf_params",
]


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
    run_chunks(maker.m, max(1, (1 << 19) // max(1, size * size)),
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
