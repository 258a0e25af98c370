"""Ab initio: particles in, orientations, offsets and a map out, with no map to start from.

The loop (``AbInitio.run``), on a random subset of the particles:

1. **centre** every particle without a reference (``centering.centre_particles``; skipped
   above ``CENTRE_OF_MASS_MAX_SIGMA2``, where the centre of mass is noise), or start from
   the offsets the particles carry, or from zero;
2. **orient** them with the distance model (``orient``: embed the particles, centred by
   their current offsets and resampled to the model's grid, under the 8 exact detector
   transforms; ``recovery.recover_from_features``);
3. **reconstruct** the two half maps (a fixed random half split; ``refinement.LocalRefiner``)
   and their FSC;
4. optionally **refine** orientations and offsets locally against each half's own map
   (``LocalRefiner.iterate``, gold standard) until the half-map resolution stops improving;
5. when the model was trained here on a map (an initial volume or the common-lines map),
   **retrain** it from scratch on the refined map from the second round on (``retrain``,
   ``model_from_volume``);
   else optionally **fine-tune** it on projections of the current map simulated like the
   data (``fine_tune``: the data's CTFs, box, pixel size, offsets and an estimated noise
   level, ``estimate_noise_sigma2``); then orient again (step 2), the particles centred
   by the refined offsets: one *iteration*.

It runs ``max_iterations`` rounds and stops earlier when a round's half-map resolution
(FSC 0.143) is worse than the best so far by more than ``resolution_tolerance``
(relative); it keeps the last round that was not. Then **all** the
particles are oriented (recovered with the kept round's model, put in the subset's frame by the
global rotation and hand that best matches the subset's orientations,
``alignment.align_rotation_handedness`` — no ground truth: the reference is our own
estimate) and, optionally, refined against the kept map low-passed well below its
resolution; the final half maps come from all the particles.

Each iteration leaves a record (``history``): resolution at FSC 0.143 and 0.5, the FSC
curve, how much orientations and offsets moved from the previous iteration (after the
best global rotation/hand, since every recovery has its own frame), seconds. The map's
hand cannot be determined from projections: the result says so.

Gold standard, honestly: the half maps come from disjoint particles and refinement keeps
them apart, but recovery orients both halves on one graph and fine-tuning or retraining
learns from the full map, so the two halves are not fully independent before refinement; the final
all-particle refinement starts from the map low-passed to ``1.5 x`` its resolution, as
RELION starts from a low-passed initial model.

Lengths in pixels of the particle images unless a name says ``_A``; angles in radians.
"""
import dataclasses
import time

import numpy as np

from . import alignment, geometry, image_ops, network, recovery
from .graph import image_transforms
from .refinement import HalfMapResult, LocalRefiner, RefinementSettings
from .scale import DEFAULT_FILL, ParticleScaler
from .simulation import simulate_particles

__all__ = ["AbInitioSettings", "AbInitioResult", "AbInitio", "ModelGrid", "orient",
           "estimate_noise_sigma2", "simulate_like_data", "fine_tune", "model_from_volume",
           "START_SHIFTS"]

START_SHIFTS = ("centre of mass", "input", "zero")

#: Above this estimated noise level (sigma^2 relative to the signal) the centre of mass is
#: noise: at sigma^2 = 16 (5j0n, 64 px, CTF, offsets <= 2.2 px) it was 2.7 px off where
#: zero was 1.1 px off, and recovery from images centred on it was worse (1.21 rad median
#: against 0.96 uncentred). Then the offsets start from the input ones and come from
#: the refinement.
CENTRE_OF_MASS_MAX_SIGMA2 = 1.0


@dataclasses.dataclass
class AbInitioSettings:
    """What an ab initio run does.

    ``diameter_A``: particle diameter (A; masks, centring, generalist scaling);
    ``symmetry``: point group; ``n_subset``: particles in the loop (0 or >= M: all);
    ``max_iterations``: orientation rounds (the first from the starting offsets, each
    further one from the offsets refined in the previous round, after a fine-tuning when
    ``fine_tune`` or ``retrain``); ``resolution_tolerance``: a round is kept, and the
    loop goes on, unless its half-map FSC0.143 resolution is worse than the best so far
    by more than this fraction; ``retrain``: when the model was trained here on a map
    (an initial volume, or the common-lines map), train a new one from scratch on the
    refined map of the second and later rounds before the next one (``train_on_volume``;
    fine-tuning is then not done);
    ``start_shifts``: ``START_SHIFTS``; ``max_shift``: px, largest offset searched/centred;
    ``refine``, ``refine_iterations``: local refinement after each orientation round (and
    of all particles at the end); ``fine_tune``, ``fine_tune_particles``,
    ``fine_tune_epochs``, ``fine_tune_learning_rate``, ``fine_tune_batch_size``:
    self-training; ``n_neighbors``, ``n_random``, ``recovery_steps``: recovery;
    ``wiener_constant``: reconstructions; ``n_threads``: None = usable cores; ``seed``;
    ``volume_particles``, ``volume_epochs``, ``volume_image_size``: the model trained
    from scratch on an initial volume when no model is given (``model_from_volume``);
    ``common_lines_classes``: with neither a model nor an initial volume, the initial
    volume is made from this many class averages of the loop's particles oriented by
    common lines (``common_lines_map``, ASPIRE; 0: refuse instead); ``aspire_python``:
    the interpreter of an environment with ASPIRE (None: found,
    ``peer_aspire.find_aspire_python``).
    """
    diameter_A: float
    symmetry: str = "C1"
    n_subset: int = 0
    max_iterations: int = 3
    resolution_tolerance: float = 0.02
    start_shifts: str = "centre of mass"
    max_shift: float = 4.0
    refine: bool = True
    refine_iterations: int = 4
    fine_tune: bool = False
    retrain: bool = True
    fine_tune_particles: int = 2000
    fine_tune_epochs: int = 3
    fine_tune_learning_rate: float = 1e-4
    fine_tune_batch_size: int = 64
    n_neighbors: int = 32
    n_random: int = 16
    recovery_steps: int = 1500
    wiener_constant: float = 0.1
    n_threads: int = None
    seed: int = 0
    volume_particles: int = 2000
    # 25 epochs leave a model trained at SNR 1/16 on its plateau (1.22 rad from a
    # common-lines map of 5j0n); 60 reach 0.52 rad, 0.14 after refinement (README).
    volume_epochs: int = 60
    volume_image_size: int = 64
    common_lines_classes: int = 200
    aspire_python: str = None


@dataclasses.dataclass
class AbInitioResult(HalfMapResult):
    """What ab initio returns (``HalfMapResult``; ``history``: one JSON-able record per
    stage) and ``iteration_volumes``: the subset's map after each iteration;
    ``best_iteration``: the iteration kept; ``subset`` (indices); ``sigma2``: the
    estimated noise level; ``model``: the kept round's Keras model (possibly fine-tuned,
    or trained on the initial volume and retrained on a refined map),
    ``model_meta``: its metadata (``model_io``); ``initial_volume``: the map the first
    model was trained on (given, or made by common lines), else None."""
    iteration_volumes: list
    best_iteration: int
    subset: np.ndarray
    sigma2: float
    model: object
    model_meta: dict = None
    initial_volume: np.ndarray = None


@dataclasses.dataclass
class ModelGrid:
    """How particles ``(M, box, box)`` at ``pixel_size`` A reach the model's input grid.

    A generalist (metadata with ``fill``, or ``kind == 'generalist'``) sees every particle
    with its diameter spanning ``fill`` of its box (``scale.ParticleScaler``); a model of
    one protein sees the pixel size it was trained at (Fourier resampling, then centred
    crop or pad to its box), as ``recover`` does."""
    meta: dict
    box: int
    pixel_size: float
    diameter_A: float

    def __post_init__(self):
        self.size = int(self.meta["image_size"])
        if self.meta.get("kind") == "generalist" or "fill" in self.meta:
            self.scaler = ParticleScaler(float(self.diameter_A), float(self.pixel_size),
                                         int(self.box), self.size,
                                         fill=float(self.meta.get("fill", DEFAULT_FILL)))
        else:
            self.scaler = None
            rate = float(self.meta.get("pixel_size") or self.pixel_size)
            self.resampled = max(8, int(round(self.box * self.pixel_size / rate)))

    @property
    def phase_flips(self):
        """True for a generalist trained on phase-flipped particles (``generalist.py``)."""
        return bool(self.meta.get("config", {}).get("phase_flip", False))

    def describe(self):
        if self.scaler is not None:
            return self.scaler.describe()
        return (f"{self.box} px at {self.pixel_size:.4g} A/px -> {self.resampled} px -> "
                f"model box {self.size} px")

    def __call__(self, images, pixel_ctf=None):
        """Model-grid images of ``images (M, box, box)``; ``pixel_ctf``: their CTF
        parameters (per-particle arrays), used to phase-flip them for a model trained on
        phase-flipped particles."""
        if pixel_ctf is not None and self.phase_flips:
            from .generalist import phase_flip
            images = phase_flip(images, self.pixel_size, pixel_ctf)
        if self.scaler is not None:
            return self.scaler(images)
        out = np.asarray(images, np.float32)
        if self.resampled != out.shape[-1]:
            out = image_ops.downsample(out, self.resampled)
        if self.size != out.shape[-1]:
            out = image_ops.crop_or_pad(out, self.size)
        return out


def estimate_noise_sigma2(images, diameter, max_shift=0.0):
    """Noise level of particles relative to their signal, as ``simulate_particles``'
    ``sigma2`` (noise variance over the mean clean-image variance).

    ``images (M, N, N)``; ``diameter`` px. The noise variance is the median over the
    particles of the variance outside a disc of ``diameter + 2 max_shift + 4`` px (at least
    the outer ring of 2 px); the signal variance is the mean image variance minus it.
    Returns ``inf`` when no signal is left above the noise."""
    x = np.asarray(images, np.float32)
    n = x.shape[-1]
    c = np.arange(n) - n // 2
    r = np.hypot(c[:, None], c[None, :])
    outside = r > min(diameter / 2.0 + max_shift + 2.0, n / 2.0 - 2.0)
    noise = float(np.median(x[:, outside].var(axis=1)))
    total = float(np.mean(x.reshape(len(x), -1).var(axis=1)))
    signal = total - noise
    return float(noise / signal) if signal > 1e-6 * max(total, 1e-30) else float("inf")


def orient(model, head, images, seed=0, n_neighbors=32, n_random=16, n_steps=1500,
           progress=None, log=None):
    """Orientations ``(M, 4)`` of model-grid images ``(M, S, S)``: embeddings under the 8
    detector transforms, graph, recovery (frame pinned, up to a global rotation and the
    hand). Returns ``(q, info)`` (``info`` of ``recover_from_features``)."""
    transforms = image_transforms(n_rotations=4, mirror=True)[0]
    feats = []
    for k, g in enumerate(transforms):
        if log is not None:
            log(f"Embedding transform {k + 1}/{len(transforms)} of {len(images)} particles")
        feats.append(network.embed(model, image_ops.apply_image_transform(images, g)))
    feats = np.stack(feats).astype(np.float32)
    n_neighbors = int(min(n_neighbors, max(1, len(images) - 2)))
    return recovery.recover_from_features(
        feats, transforms, distance_map=lambda a: network.angle_to_distance(a, head),
        n_neighbors=n_neighbors, n_random=n_random, n_steps=n_steps, seed=seed,
        progress=progress)


def simulate_like_data(volume, pixel_size, n, ctf=None, sigma2=None, max_shift=0.0,
                       symmetry="C1", seed=0):
    """``n`` particles projected from ``volume (N, N, N)`` (A/voxel ``pixel_size``) like
    the data: uniform orientations, CTFs drawn from the data's ``ctf`` (dict of
    per-particle arrays as ``LocalRefiner`` takes; None: no CTF), white noise ``sigma2``
    (None or inf: none) and offsets up to ``max_shift`` px. Returns
    ``simulate_particles``' dict."""
    rng = np.random.default_rng([seed, 7])
    ctf_n = None
    if ctf is not None:
        m = len(np.atleast_1d(ctf["defocus_u"]))
        pick = rng.integers(0, m, n)
        ctf_n = {k: (np.broadcast_to(np.asarray(v, np.float64), (m,))[pick]
                     if k in ("defocus_u", "defocus_v", "astig_angle", "phase_shift") else v)
                 for k, v in ctf.items()}
    s2 = None if sigma2 is None or not np.isfinite(sigma2) else float(sigma2)
    return simulate_particles(volume, n, symmetry=symmetry, max_shift=max_shift, ctf=ctf_n,
                              sigma2=s2, seed=seed, voxel_size=pixel_size,
                              return_clean=False)


def fine_tune(model, head, images, quaternions, symmetry="C1", epochs=3, batch_size=64,
              learning_rate=1e-4, seed=0, progress=None):
    """Continue training ``model`` on model-grid ``images (n, S, S)`` with their true
    ``quaternions``; returns ``(model, history)`` (``training.train_distance_model``,
    best validation weights kept)."""
    from .training import train_distance_model
    return train_distance_model(images, quaternions, symmetry=symmetry, epochs=epochs,
                                batch_size=batch_size, learning_rate=learning_rate,
                                validation_fraction=0.1, patience=None, seed=seed,
                                progress=progress, model=model, head=head)


def model_from_volume(volume, pixel_size, n_particles=2000, image_size=64, ctf=None,
                      sigma2=None, max_shift=0.0, symmetry="C1", epochs=25, batch_size=64,
                      learning_rate=1e-3, n_features=32, seed=0, progress=None):
    """A new distance model of the protein in ``volume (N, N, N)``, trained from scratch.

    ``volume`` is on the particles' grid (``pixel_size`` A/voxel, ``N`` = their box), e.g.
    a coarse initial map. ``n_particles`` projections are simulated like the data
    (``simulate_like_data``: the data's ``ctf`` parameters, offsets up to ``max_shift``
    px, noise ``sigma2``), centred by their true offsets (as ``fine_tune_model``: the
    loop centres the particles by their estimated offsets before embedding them) and
    Fourier-resampled to ``image_size`` px when the box is larger (training time grows
    with the pixels). ``epochs`` etc.: ``training.train_distance_model`` (10 % held out,
    every epoch run, the best validation weights kept).

    Returns ``(model, meta, history)``; ``meta`` is what ``ModelGrid`` and
    ``model_io.save_distance_model`` take: ``image_size``, ``pixel_size`` (A/px of the
    model's grid), ``head``, ``kind = 'volume'``.
    """
    from .training import train_distance_model
    n_box = int(np.shape(volume)[-1])
    size = min(int(image_size), n_box)
    sim = simulate_like_data(volume, pixel_size, int(n_particles), ctf=ctf, sigma2=sigma2,
                             max_shift=max_shift, symmetry=symmetry, seed=seed)
    images = image_ops.shift_images(sim["images"], -sim["shifts"])
    if size != n_box:
        images = image_ops.downsample(images, size)
    head = network.DEFAULT_HEAD
    # No early stopping: the loss sits on a plateau (~0.27 for 5j0n at 64 px) for ~10
    # epochs before it drops (benchmarks/paper.py's logs); the best weights are kept.
    model, hist = train_distance_model(images, sim["quaternions"], symmetry=symmetry,
                                       epochs=epochs, batch_size=batch_size,
                                       learning_rate=learning_rate, n_features=n_features,
                                       validation_fraction=0.1, patience=None, seed=seed,
                                       head=head, progress=progress)
    finite = sigma2 is not None and np.isfinite(sigma2)
    meta = dict(image_size=size, pixel_size=float(pixel_size) * n_box / size, head=head,
                kind="volume", symmetry=symmetry, n_features=int(n_features),
                training=dict(n_particles=int(n_particles),
                              sigma2=float(sigma2) if finite else None,
                              epochs=len(hist["loss"]),
                              best_val_loss=float(hist["best_val_loss"])))
    return model, meta, hist


def _frame_change(q_old, q_new, symmetry):
    """Median angle (rad) between two estimates after the best global rotation and hand
    (each recovery has its own frame)."""
    if q_old is None:
        return None
    _, q_al = alignment.align_rotation_handedness(q_old, q_new, symmetry)
    return float(np.median(alignment.orientation_errors(q_old, q_al, symmetry)))


class AbInitio:
    """The ab initio loop on particles ``images (M, N, N)`` at ``pixel_size`` A.

    ``ctf``: None or a dict of per-particle CTF arrays (``LocalRefiner``); ``shifts``:
    ``(M, 2)`` px the particles carry (None: 0), used when ``start_shifts == 'input'``;
    ``model``, ``meta``: the distance model and its metadata (``model_io``); ``log``:
    one line per call; ``progress(done, total)``. ``initial_volume``: an optional coarse
    map ``(N, N, N)`` of the protein on the particles' grid (``pixel_size``, box ``N``;
    e.g. another program's initial model): a new model is trained on its projections
    simulated like the data before the first orientation round (``train_on_volume``);
    with it, ``model`` and ``meta`` may be None and any model given is replaced. ``run()``
    does it all.
    """

    def __init__(self, images, pixel_size, model, meta, settings, ctf=None, shifts=None,
                 log=None, progress=None, initial_volume=None):
        self.images = np.asarray(images, np.float32)
        self.m, self.size = len(self.images), self.images.shape[-1]
        self.pixel_size = float(pixel_size)
        self.settings = settings
        self.ctf = ctf
        self.input_shifts = None if shifts is None else np.asarray(shifts, np.float64)
        self.log = log or (lambda line: None)
        self.progress = progress
        self.initial_volume = _checked_volume(initial_volume, self.size)
        self._set_model(model, meta or {})
        self.diameter_px = settings.diameter_A / self.pixel_size
        self.mask_radius = min(self.size / 2.0 - 2.0, self.diameter_px / 2.0 + 4.0)
        self.history = []

    def _set_model(self, model, meta):
        self.model, self.meta = model, dict(meta)
        self.head = self.meta.get("head", network.LEGACY_HEAD)
        self.grid = (ModelGrid(self.meta, self.size, self.pixel_size,
                               self.settings.diameter_A) if "image_size" in self.meta
                     else None)

    # ------------------------------------------------------------------ pieces
    def train_on_volume(self, volume, shifts, seed=0, label="the initial volume"):
        """Replace the model by one trained from scratch on ``volume (N, N, N)``'s
        projections simulated like the data (``model_from_volume``: the data's CTFs, the
        estimated noise level, offsets as large as ``shifts (M, 2)``); ``seed`` offsets
        the simulation's and training's seeds (``settings.seed + 17 + seed``). Returns a
        record for the history."""
        s = self.settings
        t0 = time.perf_counter()
        spread = float(np.percentile(np.abs(shifts), 95)) if len(shifts) else 0.0
        size = min(s.volume_image_size, self.size)
        self.log(f"Training a distance model on {s.volume_particles} projections of "
                 f"{label} ({s.volume_epochs} epochs, {size} px)")

        def log_epoch(epoch, n_epochs, logs):
            self.log(f"Model of {label}, epoch {epoch}/{n_epochs}: {logs}")
        model, meta, hist = model_from_volume(
            volume, self.pixel_size, n_particles=s.volume_particles,
            image_size=s.volume_image_size, ctf=self.ctf, sigma2=self.sigma2,
            max_shift=min(spread, s.max_shift), symmetry=s.symmetry, epochs=s.volume_epochs,
            seed=s.seed + 17 + seed, progress=log_epoch)
        self._set_model(model, meta)
        return dict(volume_training_seconds=time.perf_counter() - t0,
                    volume_val_loss=[float(v) for v in hist["val_loss"]],
                    volume_particles=int(s.volume_particles))

    def _subset(self):
        s = self.settings
        if not s.n_subset or s.n_subset >= self.m:
            return np.arange(self.m)
        rng = np.random.default_rng([s.seed, 3])
        return np.sort(rng.choice(self.m, s.n_subset, replace=False))

    def _ctf_of(self, idx):
        if self.ctf is None:
            return None
        per = ("defocus_u", "defocus_v", "astig_angle", "phase_shift")
        return {k: (np.broadcast_to(np.asarray(v, np.float64), (self.m,))[idx] if k in per
                    else v) for k, v in self.ctf.items()}

    def start_shifts(self):
        """Starting offsets ``(M, 2)`` px of every particle (``settings.start_shifts``)."""
        s = self.settings
        if s.start_shifts not in START_SHIFTS:
            raise ValueError(f"start_shifts must be one of {START_SHIFTS}, got {s.start_shifts!r}")
        if s.start_shifts == "zero":
            return np.zeros((self.m, 2))
        if s.start_shifts == "input":
            return np.zeros((self.m, 2)) if self.input_shifts is None else self.input_shifts.copy()
        if self.sigma2 > CENTRE_OF_MASS_MAX_SIGMA2:
            self.log(f"Reference-free centring skipped: at the estimated noise level "
                     f"(sigma^2 {self.sigma2:.3g} > {CENTRE_OF_MASS_MAX_SIGMA2:g}) the centre "
                     "of mass is noise; offsets start from the input ones and come from the "
                     "refinement.")
            return np.zeros((self.m, 2)) if self.input_shifts is None else self.input_shifts.copy()
        from . import alignment_search as als
        from .centering import centre_particles
        spectra = als.ParticleSpectra(self.images, self.pixel_size, ctf=self.ctf)
        shifts, info = centre_particles(spectra, s.max_shift, self.diameter_px)
        self.log(f"Reference-free centring: median offset "
                 f"{np.median(np.linalg.norm(shifts, axis=1)):.2f} px ({info['seconds']:.1f} s)")
        return shifts

    def orient(self, idx, shifts, seed):
        """Orientations of particles ``idx`` centred by ``shifts (len(idx), 2)``."""
        centred = image_ops.shift_images(self.images[idx], -np.asarray(shifts))
        q, info = orient(self.model, self.head, self.grid(centred, self._ctf_of(idx)), seed=seed,
                         n_neighbors=self.settings.n_neighbors, n_random=self.settings.n_random,
                         n_steps=self.settings.recovery_steps, progress=self.progress,
                         log=self.log)
        self.log(f"Recovered {len(idx)} orientations: median residual "
                 f"{np.nanmedian(info['residual']):.3f} rad ({info['seconds']:.1f} s)")
        return q

    def _refiner(self, idx, initial_resolution=30.0):
        s = self.settings
        rs = RefinementSettings(symmetry=s.symmetry, mask_radius=self.mask_radius,
                                max_iterations=s.refine_iterations, min_iterations=1,
                                shift_range=s.max_shift, initial_resolution=initial_resolution,
                                wiener_constant=s.wiener_constant, n_threads=s.n_threads,
                                seed=s.seed)
        return LocalRefiner(self.images[idx], self.pixel_size, ctf=self._ctf_of(idx),
                            settings=rs, log=self.log, progress=self.progress)

    def _record(self, refiner, iteration, stage, q_prev, t_prev, seconds, **extra):
        q = geometry.matrix_to_quaternion(refiner.rotations)
        rec = dict(iteration=iteration, stage=stage, n_particles=len(q),
                   resolution=float(refiner.resolution()),
                   resolution_05=float(refiner.resolution(0.5)),
                   frequencies=np.asarray(refiner.frequencies).tolist(),
                   fsc=np.nan_to_num(np.asarray(refiner.fsc, np.float64)).tolist(),
                   median_rotation_change=_frame_change(q_prev, q, self.settings.symmetry),
                   median_shift_change=(None if t_prev is None else float(np.median(
                       np.linalg.norm(refiner.shifts - t_prev, axis=1)))),
                   seconds=float(seconds), **extra)
        self.history.append(rec)
        move = rec["median_rotation_change"]
        self.log(f"Iteration {iteration} ({stage}, {len(q)} particles): half-map FSC0.143 "
                 f"{rec['resolution']:.2f} A, FSC0.5 {rec['resolution_05']:.2f} A"
                 + ("" if move is None else f"; orientations moved {np.degrees(move):.1f} deg "
                    "(median)") + f"; {seconds:.1f} s")
        return rec

    def _refine(self, refiner, shift_range):
        """Local refinement iterations until the half-map resolution stops improving."""
        best = refiner.resolution() if refiner.fsc is not None else np.inf
        for it in range(self.settings.refine_iterations):
            rec = refiner.iterate(shift_range if it == 0 else 1.5)
            improved = rec["resolution"] < best * 0.99
            best = min(best, rec["resolution"])
            if not improved:
                break

    def fine_tune_model(self, volume, shifts, iteration):
        """Fine-tune ``self.model`` on particles simulated from ``volume`` like the data."""
        s = self.settings
        t0 = time.perf_counter()
        spread = float(np.percentile(np.abs(shifts), 95)) if len(shifts) else 0.0
        sim = simulate_like_data(volume, self.pixel_size, s.fine_tune_particles,
                                 ctf=self.ctf, sigma2=self.sigma2,
                                 max_shift=min(spread, s.max_shift), symmetry=s.symmetry,
                                 seed=s.seed + 101 * iteration)
        images = self.grid(image_ops.shift_images(sim["images"], -sim["shifts"]), sim["ctf"])
        epochs = s.fine_tune_epochs

        def log_epoch(epoch, n_epochs, logs):
            self.log(f"Fine-tuning epoch {epoch}/{n_epochs}: {logs}")
        self.model, hist = fine_tune(self.model, self.head, images, sim["quaternions"],
                                     symmetry=s.symmetry, epochs=epochs,
                                     batch_size=min(s.fine_tune_batch_size, len(images) // 2),
                                     learning_rate=s.fine_tune_learning_rate,
                                     seed=s.seed + iteration, progress=log_epoch)
        return dict(fine_tune_seconds=time.perf_counter() - t0,
                    fine_tune_val_loss=[float(v) for v in hist.get("val_loss", [])],
                    fine_tune_particles=int(s.fine_tune_particles))

    def _model_snapshot(self):
        """What ``_restore_model`` needs to bring back the current model: the model and
        its metadata, and its weights when fine-tuning would change them in place."""
        weights = self.model.get_weights() if self.settings.fine_tune else None
        return self.model, dict(self.meta), weights

    def _restore_model(self, snapshot):
        """Make the model of a kept round current again (it orients all the particles
        at the end and is the one returned)."""
        model, meta, weights = snapshot
        self._set_model(model, meta)
        if weights is not None:
            model.set_weights(weights)

    def _next_model(self, volume, shifts, iteration, model_trained_here):
        """The model of the next round: retrained from scratch on ``volume`` (the
        refined map) when this run trained its model on a map and ``settings.retrain``,
        from the second round on, else fine-tuned on it when ``settings.fine_tune``, else
        unchanged. Returns a record for the history.

        The second round keeps the model: it orients the particles again from the refined
        offsets, which is cheap and gives the retraining a better map (adk_open at SNR
        1/16: 0.80 -> 0.71 rad, then 0.52 with a model retrained on that round's map)."""
        s = self.settings
        if s.retrain and model_trained_here and iteration >= 2:
            return self.train_on_volume(volume, shifts, seed=iteration,
                                        label=f"iteration {iteration}'s refined map")
        if s.fine_tune:
            return self.fine_tune_model(volume, shifts, iteration)
        return {}

    # ------------------------------------------------------------------ driver
    def common_lines_volume(self, idx, workdir=None):
        """Set ``self.initial_volume`` to a coarse map of particles ``idx`` made with no
        reference: class averages oriented by common lines (``common_lines_map``, ASPIRE).
        Returns a record for the history."""
        from .common_lines_map import CommonLinesSettings, common_lines_map
        s = self.settings
        n_classes = int(min(s.common_lines_classes, len(idx)))
        self.log(f"No model and no initial volume: a first map from {n_classes} class "
                 f"averages of {len(idx)} particles oriented by common lines (ASPIRE)")
        t0 = time.perf_counter()
        vol, info = common_lines_map(
            self.images[idx], self.pixel_size, s.diameter_A, ctf=self._ctf_of(idx),
            settings=CommonLinesSettings(n_classes=n_classes, seed=s.seed),
            python=s.aspire_python, workdir=workdir, log=self.log)
        self.initial_volume = _checked_volume(vol, self.size)
        self.common_lines_averages = info["averages"]
        return dict(common_lines_seconds=time.perf_counter() - t0,
                    common_lines_classes=n_classes)

    def run(self, workdir=None):
        """The whole run; ``workdir``: where a common-lines start leaves ASPIRE's files
        (None: a temp folder)."""
        s = self.settings
        if self.model is None and self.initial_volume is None and not s.common_lines_classes:
            raise ValueError("Give a distance model, or an initial volume to train one on.")
        start = time.perf_counter()
        subset = self._subset()
        self.sigma2 = estimate_noise_sigma2(self.images[subset[:2000]], self.diameter_px,
                                            s.max_shift)
        shifts_all = self.start_shifts()
        extra = {}
        if self.model is None and self.initial_volume is None:
            extra = self.common_lines_volume(subset, workdir)
        model_trained_here = self.initial_volume is not None
        if model_trained_here:
            extra.update(self.train_on_volume(self.initial_volume, shifts_all[subset]))
        self.log(f"{len(subset)} of {self.m} particles in the loop; model grid: "
                 f"{self.grid.describe()}; estimated noise sigma^2 {self.sigma2:.3g}")
        refiner = self._refiner(subset)
        shifts = shifts_all[subset].copy()
        q_prev, t_prev = None, None
        best, best_resolution = None, np.inf
        volumes = []
        for it in range(1, s.max_iterations + 1):
            t0 = time.perf_counter()
            q = self.orient(subset, shifts, seed=s.seed + it)
            refiner.start(q, shifts)
            rec = self._record(refiner, it, "recover", q_prev, t_prev,
                               time.perf_counter() - t0, **extra)
            if s.refine:
                t1 = time.perf_counter()
                self._refine(refiner, s.max_shift if it == 1 else 1.5)
                rec = self._record(refiner, it, "refine", q_prev, t_prev,
                                   time.perf_counter() - t1)
            volume = refiner.reconstruct(np.arange(len(subset)))
            volumes.append(volume)
            state = dict(iteration=it, resolution=rec["resolution"],
                         q=geometry.matrix_to_quaternion(refiner.rotations),
                         shifts=refiner.shifts.copy(), volume=volume,
                         model=self._model_snapshot())
            q_prev, t_prev = state["q"], state["shifts"]
            # A later round starts from better offsets (and a model of a better map):
            # it is kept unless its half maps are clearly worse; they barely tell rounds
            # apart (adk_open, SNR 1/16: 10.64, 10.50, 10.53 A for 0.80, 0.71, 0.52 rad).
            if best is not None and (state["resolution"]
                                     > best_resolution * (1 + s.resolution_tolerance)):
                self.log(f"Iteration {it}'s half maps are more than "
                         f"{s.resolution_tolerance:.0%} worse than the best so far "
                         f"({state['resolution']:.2f} A against {best_resolution:.2f} A): "
                         f"stopping; keeping iteration {best['iteration']}.")
                self._restore_model(best["model"])
                break
            best = state
            best_resolution = min(best_resolution, state["resolution"])
            if it == s.max_iterations:
                break
            # The next round orients the particles centred by the refined offsets: the
            # model learnt centred projections, and at sigma^2 > 1 the first round saw
            # the particles uncentred (adk_open at SNR 1/16: 0.80 -> 0.71 rad).
            shifts = refiner.shifts.copy()
            extra = self._next_model(volume, shifts, it, model_trained_here)
        result = self._final(best, subset, shifts_all)
        return AbInitioResult(
            history=list(self.history), iteration_volumes=volumes,
            best_iteration=best["iteration"], subset=subset, sigma2=self.sigma2,
            model=self.model, model_meta=dict(self.meta), initial_volume=self.initial_volume,
            seconds=time.perf_counter() - start, **result)

    def _final(self, best, subset, shifts_all):
        """Orient every particle in the kept iteration's frame; final half maps."""
        s = self.settings
        t0 = time.perf_counter()
        if len(subset) == self.m:
            idx = np.arange(self.m)
            q, shifts = best["q"], best["shifts"]
            initial_map, res0 = None, 30.0
        else:
            idx = np.arange(self.m)
            shifts = shifts_all.copy()
            shifts[subset] = best["shifts"]
            q_all = self.orient(idx, shifts, seed=s.seed + 1000)
            info, _ = alignment.align_rotation_handedness(best["q"], q_all[subset], s.symmetry)
            q = geometry.normalize(alignment.apply_quaternion_map(info["matrix"], q_all))
            q[subset] = best["q"]
            self.log(f"All {self.m} particles oriented; put in the subset's frame (hand "
                     f"{'flipped' if info['flipped'] else 'kept'}, mean disagreement on the "
                     f"subset {np.degrees(info['mean_error']):.1f} deg).")
            initial_map, res0 = best["volume"], 1.5 * best["resolution"]
        refiner = self._refiner(idx, initial_resolution=res0)
        use_map = initial_map is not None and s.refine
        refiner.start(q, shifts, initial_map if use_map else None)
        stage = "all particles"
        if s.refine and (use_map or self.history[-1]["stage"] != "refine"):
            self._refine(refiner, 1.5)
            stage = "all particles, refined"
        self._record(refiner, best["iteration"], stage, None, None, time.perf_counter() - t0)
        return dict(quaternions=geometry.matrix_to_quaternion(refiner.rotations),
                    shifts=refiner.shifts.copy(), halves=refiner.halves.copy(),
                    volume=refiner.reconstruct(np.arange(self.m)),
                    half_maps=np.stack(refiner.half_maps), frequencies=refiner.frequencies,
                    fsc=refiner.fsc, resolution=float(refiner.resolution()),
                    resolution_05=float(refiner.resolution(0.5)))


def _checked_volume(volume, size):
    """``volume`` as a float32 ``(size, size, size)`` array (None stays None)."""
    if volume is None:
        return None
    vol = np.asarray(volume, np.float32)
    if vol.shape != (size,) * 3:
        raise ValueError(f"The initial volume must be on the particles' grid, a "
                         f"({size}, {size}, {size}) cube (volumes.resample_to_grid); got "
                         f"{vol.shape}.")
    if not np.all(np.isfinite(vol)) or not np.ptp(vol) > 0:
        raise ValueError("The initial volume is constant or not finite.")
    return vol


def run_ab_initio(images, pixel_size, model, meta, settings, ctf=None, shifts=None,
                  log=None, progress=None, initial_volume=None, workdir=None):
    """``AbInitio(...).run(workdir)``: what protocols and benchmarks call."""
    return AbInitio(images, pixel_size, model, meta, settings, ctf=ctf, shifts=shifts,
                    log=log, progress=progress, initial_volume=initial_volume).run(workdir)
