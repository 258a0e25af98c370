"""Local refinement: from a map and starting orientations to the best map the data allow.

Gold standard (Henderson et al. 2012; RELION's auto-refine): the particles are split at
random into two halves once; each half is refined against its own half map only, so the
two maps stay independent and their FSC is an honest resolution. One iteration:

1. Each half map is masked, weighted by the figure of merit of the current half-map FSC
   (``sqrt(2 FSC / (1 + FSC))``, Rosenthal & Henderson 2003: the expected correlation
   of the map with the truth) and band-limited at ``r_max``, the shell where the FSC
   fell below ``fsc_threshold`` plus ``band_margin`` shells.
2. Per particle, a local search around its current orientation ``R`` and offset ``t``,
   coarse to fine: at each of ``levels`` levels the 27 orientations ``exp([w]x) R``,
   ``w`` in ``{-s, 0, s}^3`` (rotations about the detector's axes), are projected
   (central slices of the map's spectrum, ``alignment_search.slice_values``) and scored
   by CTF-aware normalised cross-correlation in Fourier space over a grid of offsets;
   the best pair is kept and ``s`` halves. The coarsest step is ``step_factor / r_max``
   radians (an orientation error ``d`` moves the outermost used Fourier sample by
   ``r_max d`` pixels), so steps shrink as the resolution improves. The offset is then
   made sub-pixel by Newton steps on the analytic score.
3. Each half map is reconstructed from its own particles with the new orientations and
   offsets (``reconstruct_fourier``, CTF-corrected), and the FSC computed.

When the half-map resolution has not improved for an iteration (after
``min_iterations``), the angular steps are halved for one more pass; it stops when that
pass does not improve it either, or after ``max_iterations``. The final map is reconstructed from
all particles. Work is vectorised over batches of particles and candidates and run on
``n_threads`` threads; ``progress(done, total)`` counts particles within an iteration and
``log`` gets a line per iteration.
"""
import concurrent.futures
import dataclasses
import threading
import time

import numpy as np
from scipy.spatial.transform import Rotation

from . import alignment_search as als
from . import geometry, projection
from .ctf import ctf_2d_batch
from .fsc import fsc, resolution_at
from .reconstruction import reconstruct_fourier, soft_spherical_mask
from .threads import thread_count

__all__ = ["RefinementSettings", "RefinementResult", "LocalRefiner", "refine_particles",
           "figure_of_merit", "band_limit_from_fsc", "neighbourhood", "START_SHIFTS"]


@dataclasses.dataclass
class RefinementSettings:
    """What a refinement does (all lengths in pixels of the particle images, angles in
    radians).

    ``symmetry``: point group of the reconstructions; ``mask_radius``: soft circular mask
    of the particles and spherical mask of the maps (None: ``N / 2 - 4``);
    ``max_iterations``/``min_iterations``: bounds on the iterations; ``shift_range``:
    half-width of the offset search of the first iteration (later ones search +-1 px
    around the current offset, which can still travel each iteration);
    ``step_factor``: coarsest angular step times ``r_max``; ``max_step``: cap on it;
    ``levels``: coarse-to-fine levels (each halves the step); ``fsc_threshold`` and
    ``band_margin``: the band limit (shells); ``initial_resolution``: Angstrom, low-pass
    of a given starting map (and band limit of the first iteration); ``wiener_constant``:
    of the reconstructions; ``batch_size``: particles searched together;
    ``n_threads``: None = the usable cores; ``seed``: the half split.
    """
    symmetry: str = "C1"
    mask_radius: float = None
    max_iterations: int = 10
    min_iterations: int = 3
    shift_range: float = 4.0
    step_factor: float = 1.0
    max_step: float = 0.15
    levels: int = 3
    fsc_threshold: float = 0.143
    band_margin: int = 2
    initial_resolution: float = 30.0
    wiener_constant: float = 0.1
    batch_size: int = 16
    n_threads: int = None
    seed: int = 0


@dataclasses.dataclass
class HalfMapResult:
    """Orientations and offsets of every particle and the gold-standard maps they give:
    ``quaternions (M, 4)``, ``shifts (M, 2)`` px (offsets of the particles' centres,
    ``geometry.py`` convention); ``halves (M,)`` 0/1; ``volume``, ``half_maps`` ``(2, N,
    N, N)``; ``frequencies``, ``fsc``: the final half-map FSC (1/A); ``resolution``: FSC =
    0.143 (A), ``resolution_05``: FSC = 0.5; ``history``: one dict per iteration or
    stage; ``seconds``: wall time."""
    quaternions: np.ndarray
    shifts: np.ndarray
    halves: np.ndarray
    volume: np.ndarray
    half_maps: np.ndarray
    frequencies: np.ndarray
    fsc: np.ndarray
    resolution: float
    resolution_05: float
    history: list
    seconds: float


@dataclasses.dataclass
class RefinementResult(HalfMapResult):
    """What a refinement returns (``HalfMapResult``) and ``scores (M,)``: normalised
    cross-correlation of each particle with its final model projection over the final
    band (higher is better)."""
    scores: np.ndarray


def figure_of_merit(fsc_values):
    """``sqrt(2 FSC / (1 + FSC))`` per shell, 0 where the FSC is <= 0 or NaN: the
    expected correlation of the full map with the truth (Rosenthal & Henderson 2003)."""
    f = np.nan_to_num(np.asarray(fsc_values, np.float64), nan=0.0)
    f = np.clip(f, 0.0, 1.0)
    return np.sqrt(2.0 * f / (1.0 + f))


def band_limit_from_fsc(fsc_values, threshold=0.143, margin=2):
    """Shell index (cycles per box) where ``fsc_values`` (one per shell, from
    ``fsc.fsc``) first drop below ``threshold``, plus ``margin``."""
    f = np.nan_to_num(np.asarray(fsc_values, np.float64), nan=0.0)
    below = np.flatnonzero(f[1:] < threshold)
    shell = (below[0] + 1) if len(below) else len(f) - 1
    return int(shell + margin)


def neighbourhood(step):
    """The 27 rotations ``exp([w]x)``, ``w`` in ``{-step, 0, step}^3``: ``(27, 3, 3)``
    (index 13 is the identity)."""
    a = np.array([-step, 0.0, step])
    w = np.stack(np.meshgrid(a, a, a, indexing="ij"), axis=-1).reshape(-1, 3)
    return Rotation.from_rotvec(w).as_matrix()


def _angles_between(R1, R2):
    """Rotation angles (rad) between ``(M, 3, 3)`` stacks."""
    c = (np.einsum("mij,mij->m", R1, R2) - 1.0) / 2.0
    return np.arccos(np.clip(c, -1.0, 1.0))


class LocalRefiner:
    """Gold-standard local refinement of orientations and offsets against half maps.

    ``images``: ``(M, N, N)`` particles; ``pixel_size``: Angstrom; ``ctf``: None or a
    dict of ``ctf_2d_batch`` keywords with per-particle arrays (``defocus_u``,
    ``defocus_v``, ``astig_angle``) and scalars; ``settings``: ``RefinementSettings``;
    ``log``: a function taking one line; ``progress``: ``progress(done, total)`` per
    iteration. State: the particles' spectra, the half split, the current orientations,
    offsets and half maps, the band limit, the history. ``run`` does it all.
    """

    def __init__(self, images, pixel_size, ctf=None, settings=None, log=None, progress=None):
        self.settings = settings or RefinementSettings()
        self.images = np.asarray(images, dtype=np.float32)
        self.size = self.images.shape[-1]
        self.pixel_size = float(pixel_size)
        self.ctf = ctf
        s = self.settings
        self.mask_radius = ((self.size / 2.0 - 4.0) if s.mask_radius is None
                            else float(s.mask_radius))
        self.log = log or (lambda line: None)
        self.progress = progress
        self.particles = als.ParticleSpectra(self.images, pixel_size, ctf=ctf,
                                             mask_radius=self.mask_radius)
        m = len(self.images)
        if m < 4:
            raise ValueError(f"refinement needs at least 4 particles, got {m}")
        self.halves = np.random.default_rng(s.seed).permutation(m) % 2
        self.rotations = None
        self.shifts = None
        self.scores = np.zeros(m, dtype=np.float32)
        self.half_maps = None
        self.fsc = None
        self.frequencies = None
        self.r_max = None
        self.history = []
        self.step_scale = 1.0           # halved once when the resolution stalls

    # ------------------------------------------------------------------ pieces
    def _ctf_callable(self, indices):
        if self.ctf is None:
            return None
        c = self.ctf
        keys = ("defocus_u", "defocus_v", "astig_angle")
        m = len(self.images)
        per = {k: np.broadcast_to(np.asarray(c[k], np.float64), (m,))[indices] for k in keys}
        phase = np.broadcast_to(np.asarray(c.get("phase_shift", 0.0), np.float64), (m,))[indices]
        scalars = {k: v for k, v in c.items() if k not in keys and k != "phase_shift"}
        px = self.pixel_size

        def ctfs(idx, size):
            return ctf_2d_batch(size, px, per["defocus_u"][idx], per["defocus_v"][idx],
                                        per["astig_angle"][idx], phase_shift=phase[idx],
                                        **scalars)
        return ctfs

    def reconstruct(self, indices, label=""):
        """Map ``(N, N, N)`` from particles ``indices`` with the current state."""
        s = self.settings
        return reconstruct_fourier(
            self.images[indices], self.rotations[indices], shifts=self.shifts[indices],
            ctfs=self._ctf_callable(indices), symmetry=s.symmetry,
            wiener_constant=s.wiener_constant, mask_radius=self.mask_radius)

    def reconstruct_halves(self):
        """Both half maps from their own particles, and their FSC."""
        self.half_maps = [self.reconstruct(np.flatnonzero(self.halves == h)) for h in (0, 1)]
        self.frequencies, self.fsc = fsc(self.half_maps[0], self.half_maps[1],
                                                     self.pixel_size)

    def resolution(self, threshold=None):
        """Current half-map resolution (A) at ``threshold`` (default the settings')."""
        t = self.settings.fsc_threshold if threshold is None else threshold
        return resolution_at(self.frequencies, self.fsc, t)

    def _model_filter(self, band):
        """Per band sample weight of the model: the FSC's figure of merit, or a Gaussian
        low-pass at ``initial_resolution`` before any FSC exists."""
        if self.fsc is None:
            r0 = self.size * self.pixel_size / self.settings.initial_resolution
            return np.exp(-0.5 * (band.radius / r0) ** 2).astype(np.float32)
        fom = figure_of_merit(self.fsc)
        return np.interp(band.radius, np.arange(len(fom)), fom).astype(np.float32)

    def _search_batch(self, spectrum, indices, band, filt, step, shift_range, levels):
        """Coarse-to-fine search of particles ``indices`` (one half) against
        ``spectrum``: updates ``rotations``, ``shifts``, ``scores`` in place."""
        x, ctf = self.particles.band_values(indices, band)
        xw = band.weight * np.conj(x) * ctf                                # (B, K)
        R = self.rotations[indices]
        t = self.shifts[indices].copy()
        b = len(indices)
        rows = np.arange(b)
        for level in range(levels):
            cand = neighbourhood(step / 2 ** level)[None] @ R[:, None]      # (B, 27, 3, 3)
            model = als.slice_values(spectrum, cand, band) * filt           # (B, 27, K)
            norms = als._norms(model, ctf[:, None, :], band)                # (B, 27)
            cross = xw[:, None, :] * model
            cross *= als.shift_phases(band, t)[:, None, :]
            offsets = (als.shift_grid(shift_range, 1.0) if level == 0
                       else als.shift_grid(1.0, 0.5))
            _, best, off = als.grid_search_shifts(cross, norms, band, offsets)
            R = cand[rows, best]
            t = t + off
            shift_range = min(shift_range, 1.0)
        model = als.slice_values(spectrum, R, band) * filt
        cross = xw * model
        norm = als._norms(model, ctf, band)
        t, score = als.refine_shifts(cross, norm, band, t)
        xnorm = np.sqrt(np.maximum((np.abs(x) ** 2) @ band.weight, 1e-30))
        self.rotations[indices] = R
        self.shifts[indices] = t
        self.scores[indices] = score / xnorm

    def search(self, shift_range, wide=False):
        """One search pass of every particle against its own half map (``wide``: the
        first two, from twice the step with one more level: the same finest step, twice
        the reach, for starts a few degrees off)."""
        s = self.settings
        band = als.make_band(self.size, self.r_max)
        filt = self._model_filter(band)
        step = min(s.max_step, s.step_factor / max(self.r_max, 1.0)) * self.step_scale
        levels = s.levels
        if wide:    # the first passes: twice the step and one more level (reach x2)
            step, levels = 2.0 * step, levels + 1
        m = len(self.images)
        mask = soft_spherical_mask(self.size, self.mask_radius)
        done = [0]
        lock = threading.Lock()
        threads = thread_count(s.n_threads)
        for h in (0, 1):
            spectrum = projection.prepare_volume(self.half_maps[h] * mask, interleave=False)
            idx = np.flatnonzero(self.halves == h)
            batches = [idx[i:i + s.batch_size] for i in range(0, len(idx), s.batch_size)]

            def work(batch, spectrum=spectrum):
                self._search_batch(spectrum, batch, band, filt, step, shift_range, levels)
                with lock:
                    done[0] += len(batch)
                    if self.progress is not None:
                        self.progress(done[0], m)

            if threads <= 1:
                for batch in batches:
                    work(batch)
            else:
                with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                    list(pool.map(work, batches))
        return step

    # ------------------------------------------------------------------ driver
    def start(self, rotations, shifts=None, initial_map=None):
        """Set the starting orientations ``(M, 3, 3)`` or ``(M, 4)``, offsets ``(M, 2)``
        (default 0) and half maps: both from ``initial_map`` ``(N, N, N)`` (low-passed
        to ``initial_resolution``) if given, else reconstructed from the particles."""
        R = np.asarray(rotations, np.float64)
        self.rotations = geometry.quaternion_to_matrix(R) if R.shape[-1] == 4 else R.copy()
        m = len(self.images)
        if len(self.rotations) != m:
            raise ValueError(f"{len(self.rotations)} orientations for {m} particles")
        self.shifts = (np.zeros((m, 2)) if shifts is None
                       else np.array(shifts, np.float64).reshape(m, 2))
        if initial_map is not None:
            vol = np.asarray(initial_map, np.float32)
            if vol.shape != (self.size,) * 3:
                raise ValueError(f"the starting map is {vol.shape}, the particles "
                                 f"{self.size} px: resample it to the particles' box")
            vol = _low_pass(vol, self.size * self.pixel_size / self.settings.initial_resolution)
            self.half_maps = [vol, vol]
            self.fsc = None
            self.r_max = self.size * self.pixel_size / self.settings.initial_resolution
        else:
            self.reconstruct_halves()
            self.r_max = band_limit_from_fsc(self.fsc, self.settings.fsc_threshold,
                                             self.settings.band_margin)

    def iterate(self, shift_range, wide=False):
        """One iteration: search, reconstruct the halves, new band limit. Returns its
        record (also appended to ``history``)."""
        t0 = time.perf_counter()
        R_old, t_old = self.rotations.copy(), self.shifts.copy()
        r_used = self.r_max
        step = self.search(shift_range, wide)
        self.reconstruct_halves()
        self.r_max = band_limit_from_fsc(self.fsc, self.settings.fsc_threshold,
                                         self.settings.band_margin)
        rec = dict(iteration=len(self.history) + 1, band_limit=float(r_used),
                   angular_step=float(step), resolution=self.resolution(),
                   resolution_05=self.resolution(0.5),
                   median_rotation_change=float(np.median(_angles_between(R_old, self.rotations))),
                   median_shift_change=float(np.median(
                       np.linalg.norm(self.shifts - t_old, axis=1))),
                   median_score=float(np.median(self.scores)),
                   seconds=time.perf_counter() - t0)
        self.history.append(rec)
        self.log(f"Refinement iteration {rec['iteration']}: band {r_used:.0f} shells "
                 f"({self.size * self.pixel_size / max(r_used, 1e-9):.1f} A), step "
                 f"{np.degrees(step):.2f} deg; half-map FSC0.143 {rec['resolution']:.2f} A, "
                 f"FSC0.5 {rec['resolution_05']:.2f} A; median change "
                 f"{np.degrees(rec['median_rotation_change']):.2f} deg, "
                 f"{rec['median_shift_change']:.2f} px; {rec['seconds']:.1f} s")
        return rec

    def run(self, rotations, shifts=None, initial_map=None):
        """Refine from the given start until the resolution stops improving; returns a
        ``RefinementResult``."""
        start = time.perf_counter()
        s = self.settings
        self.start(rotations, shifts, initial_map)
        if self.fsc is not None:
            self.log(f"Starting half maps: FSC0.143 {self.resolution():.2f} A, "
                     f"FSC0.5 {self.resolution(0.5):.2f} A")
        best = np.inf
        self.step_scale = 1.0
        for it in range(s.max_iterations):
            rec = self.iterate(s.shift_range if it == 0 else 1.5, wide=it < 2)
            improved = rec["resolution"] < best * 0.99
            best = min(best, rec["resolution"])
            if it + 1 >= s.min_iterations and not improved:
                if self.step_scale < 1.0:
                    break
                # Stalled at this sampling: one more pass with steps half as large (as
                # RELION's auto-refine refines its sampling on convergence).
                self.step_scale = 0.5
                self.log("Resolution stalled: halving the angular steps for a final pass.")
        volume = self.reconstruct(np.arange(len(self.images)))
        return RefinementResult(
            quaternions=geometry.matrix_to_quaternion(self.rotations), shifts=self.shifts.copy(),
            scores=self.scores.copy(), halves=self.halves.copy(), volume=volume,
            half_maps=np.stack(self.half_maps), frequencies=self.frequencies,
            fsc=self.fsc, resolution=self.resolution(), resolution_05=self.resolution(0.5),
            history=list(self.history), seconds=time.perf_counter() - start)


def _low_pass(volume, r0):
    """Gaussian low-pass of a cubic map, ``exp(-|k|^2 / 2 r0^2)`` (``r0`` cycles/box)."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n) * n
    kz = np.fft.rfftfreq(n) * n
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    f = np.fft.rfftn(volume) * np.exp(-0.5 * k2 / r0 ** 2)
    return np.fft.irfftn(f, s=volume.shape).astype(np.float32)


START_SHIFTS = ("input", "centre of mass", "zero")


def refine_particles(images, pixel_size, orientations, shifts=None, ctf=None,
                     initial_map=None, settings=None, start_shifts="input", diameter=None,
                     log=None, progress=None):
    """Refine particles' orientations and offsets: what protocols and benchmarks call.

    ``images`` ``(M, N, N)``; ``pixel_size`` A; ``orientations`` ``(M, 4)`` quaternions or
    ``(M, 3, 3)``; ``shifts`` ``(M, 2)`` px, the particles' current offsets; ``ctf``: as
    ``LocalRefiner``; ``initial_map``: optional ``(N, N, N)`` start (else made from the
    particles); ``start_shifts``: ``'input'`` (``shifts``, 0 if None), ``'centre of
    mass'`` (reference-free, ``centering.centre_particles``, needs ``diameter`` px) or
    ``'zero'``. Returns a ``RefinementResult`` whose ``history`` starts with the
    starting offsets' record (``centring`` key) when they were estimated.
    """
    settings = settings or RefinementSettings()
    log = log or (lambda line: None)
    m = len(images)
    if start_shifts not in START_SHIFTS:
        raise ValueError(f"start_shifts must be one of {START_SHIFTS}, got {start_shifts!r}")
    refiner = LocalRefiner(images, pixel_size, ctf=ctf, settings=settings, log=log,
                           progress=progress)
    start = np.zeros((m, 2)) if shifts is None else np.asarray(shifts, np.float64)
    if start_shifts == "zero":
        start = np.zeros((m, 2))
    elif start_shifts == "centre of mass":
        from . import centering
        if not diameter:
            raise ValueError("centring by centre of mass needs the particle diameter (px)")
        unmasked = als.ParticleSpectra(images, pixel_size, ctf=ctf)
        start, info = centering.centre_particles(unmasked, settings.shift_range, diameter)
        offset = np.median(np.linalg.norm(start, axis=1))
        log(f"Reference-free centring: median offset {offset:.2f} px "
            f"({info['seconds']:.1f} s)")
    return refiner.run(orientations, start, initial_map)
