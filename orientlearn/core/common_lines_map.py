"""A first map with no model and no reference: 2-D class averages, common lines, inversion.

At SNR 1/16 common lines on raw particles are random (the README's peer table), but on
2-D class averages, where ten particles of nearly the same view are aligned in plane and
averaged, ASPIRE's pipeline orients 5j0n's averages at a median of 0.23 rad (DESIGN.md).
That is enough for a *coarse* map, and a coarse map (25-40 A) is enough to train a
distance model that orients the particles themselves (``abinitio.model_from_volume``,
the README's bootstrap table). So ab initio can start from nothing but the particles:

1. phase-flip the particles with their CTF estimates (``generalist.phase_flip``) and
   Fourier-downsample them to at most ``image_size`` px (ASPIRE's cost grows with pixels);
2. in the ASPIRE environment (``peer_aspire.find_aspire_python``): rotationally invariant
   2-D classification (``RIRClass2D``: each particle's ``n_nbor`` nearest views), one
   average per class for the ``n_classes`` most compact classes (``DistanceClassSelector``:
   the smallest mean distance to their neighbours in the invariant features; the first
   classes, ASPIRE's debug source, were 1.35 rad off at SNR 1/16 on adenylate kinase where
   the most compact are 0.65, and 0.39 against 0.14 on 5j0n), and ``CLSyncVoting`` on the
   averages;
3. invert the averages with their rotations (``reconstruction.reconstruct_fourier``, no
   CTF: the averages are phase-flipped), mask to the particle diameter, low-pass to
   ``resolution_A`` and resample onto the particles' grid.

The map's hand and frame are arbitrary (the distance model learns from its projections,
so neither matters). Nothing here imports Scipion; ASPIRE runs in a subprocess, as the
common-lines peer does. Lengths in pixels unless a name says ``_A``.
"""
import dataclasses
import os
import tempfile

import numpy as np

from . import image_ops, peer_aspire, volumes
from .reconstruction import reconstruct_fourier

__all__ = ["CLASS_SELECTIONS", "CommonLinesSettings", "common_lines_map", "invert_averages"]

#: How the averaged classes are chosen (``CommonLinesSettings.selection``).
CLASS_SELECTIONS = ("compact", "first")

#: Files of one run, under its work folder.
IMAGES_FILE, AVERAGES_FILE, ROTATIONS_FILE, INFO_FILE, RUNNER_FILE = (
    "particles.npy", "averages.npy", "rotations.npy", "info.json", "class_average_runner.py")

#: Runs inside the ASPIRE environment:
#: ``runner particles.npy averages.npy rotations.npy info.json pixel_size n_classes n_nbor
#: n_theta seed fspca_components bispectrum_components selection``. One line per stage;
#: ASPIRE's own log lines come too. ``info.json``'s ``class_centres``: the particle each
#: average is centred on (its class's reference).
RUNNER = r'''
import json, sys, time
t0 = time.perf_counter()

def say(msg):
    print(msg, flush=True)

import numpy as np
import aspire
from aspire.abinitio import CLSyncVoting
from aspire.classification import DistanceClassSelector, RIRClass2D, TopClassSelector
from aspire.denoising import DebugClassAvgSource
from aspire.source import ArrayImageSource

(images_path, averages_path, rotations_path, info_path, pixel_size, n_classes, n_nbor,
 n_theta, seed, n_fspca, n_bispectrum, selection) = sys.argv[1:13]
n_classes, n_nbor, n_theta, seed = int(n_classes), int(n_nbor), int(n_theta), int(seed)
np.random.seed(seed)
images = np.load(images_path)
n, size = len(images), images.shape[-1]
say(f"ASPIRE {aspire.__version__}: {n} particles of {size} px, {n_classes} class averages "
    f"of {n_nbor} neighbours, n_theta {n_theta}")
src = ArrayImageSource(images, pixel_size=float(pixel_size))
stages = []

def stage(k, name, fn):
    say(f"Stage {k}/3: {name}...")
    t = time.perf_counter()
    out = fn()
    stages.append((name, time.perf_counter() - t))
    say(f"Stage {k}/3: {name} done in {stages[-1][1]:.1f} s")
    return out

classifier = RIRClass2D(src, fspca_components=int(n_fspca),
                        bispectrum_components=int(n_bispectrum), n_nbor=n_nbor,
                        large_pca_implementation="legacy", nn_implementation="legacy",
                        bispectrum_implementation="legacy", seed=seed)
selector = DistanceClassSelector() if selection == "compact" else TopClassSelector()
averages_src = DebugClassAvgSource(src, n_nbor=n_nbor, classifier=classifier,
                                   class_selector=selector)
stage(1, "rotationally invariant 2-D classification", averages_src._classify)
averages = stage(2, f"{n_classes} class averages ({selection} classes)",
                 lambda: averages_src.images[:n_classes].asnumpy())
centres = [int(i) for i in np.asarray(averages_src.selection_indices)[:n_classes]]
estimator = CLSyncVoting(ArrayImageSource(averages, pixel_size=float(pixel_size)),
                         n_theta=n_theta)
stage(3, f"common lines of {n_classes} averages", estimator.estimate_rotations)
rotations = np.asarray(estimator.rotations, dtype=np.float64)
np.save(averages_path, np.asarray(averages, dtype=np.float32))
np.save(rotations_path, rotations)
json.dump(dict(aspire_version=aspire.__version__, numpy_version=np.__version__,
               n_particles=n, image_size=int(size), n_classes=n_classes, n_nbor=n_nbor,
               n_theta=n_theta, seed=seed, selection=selection, class_centres=centres,
               stages=stages,
               seconds=time.perf_counter() - t0), open(info_path, "w"))
say(f"{n_classes} class averages oriented in {time.perf_counter() - t0:.1f} s")
'''


@dataclasses.dataclass
class CommonLinesSettings:
    """How the first map is made.

    ``n_classes``: class averages oriented by common lines (ASPIRE's pipeline demo: 200);
    ``n_nbor``: particles per class (10); ``selection``: which classes are averaged,
    ``"compact"`` (smallest mean feature distance to their neighbours, ASPIRE's
    ``DistanceClassSelector``) or ``"first"`` (those of the first particles, as before:
    worse at SNR 1/16); ``image_size``: px the particles are
    downsampled to first (64); ``n_theta``: common-line angular sampling (180);
    ``resolution_A``: the map is low-passed to this (A; None: 4 x the pixel size of the
    downsampled images, a coarse map is what the next step wants); ``seed``.
    """
    n_classes: int = 200
    n_nbor: int = 10
    selection: str = "compact"
    image_size: int = 64
    n_theta: int = 180
    resolution_A: float = None
    seed: int = 0


def feature_counts(size):
    """``(FSPCA components, bispectrum components)`` of the 2-D classification of
    ``size`` px images: ASPIRE's defaults (400, 300), fewer for small images (the basis has
    about ``size^2 / 2`` coefficients)."""
    return min(400, size * size // 4), min(300, size * size // 8)


def min_particles(n_classes, size):
    """Fewest particles the classification takes: one per class, and at least as many
    as bispectrum components (ASPIRE's PCA of them)."""
    return max(3, int(n_classes), feature_counts(size)[1])


def _prepare(images, pixel_size, ctf, size):
    """Phase-flipped (when ``ctf``) and downsampled particles; their pixel size (A)."""
    from .generalist import phase_flip
    m, n_box = len(images), np.shape(images)[-1]
    per = ("defocus_u", "defocus_v", "astig_angle", "phase_shift")
    out = np.empty((m, min(size, n_box), min(size, n_box)), np.float32)
    for b0 in range(0, m, 512):          # bounded memory: complex spectra of one batch
        x = np.asarray(images[b0:b0 + 512], np.float32)
        if ctf is not None:
            part = {k: (np.broadcast_to(np.asarray(v, np.float64), (m,))[b0:b0 + len(x)]
                        if k in per else v) for k, v in ctf.items()}
            x = phase_flip(x, pixel_size, part)
        out[b0:b0 + len(x)] = image_ops.downsample(x, size) if size < n_box else x
    return out, float(pixel_size) * n_box / out.shape[-1]


def common_lines_map(images, pixel_size, diameter_A, ctf=None, settings=None, python=None,
                     workdir=None, log=None):
    """A coarse map ``(N, N, N)`` of the particles ``images (M, N, N)`` (A/px
    ``pixel_size``) on their own grid, from no reference.

    ``diameter_A``: particle diameter (the map's mask); ``ctf``: None or the per-particle
    CTF parameters (dict of arrays, as ``generalist.phase_flip`` takes); ``settings``:
    ``CommonLinesSettings``; ``python``: the interpreter of an environment with ASPIRE
    (None: ``peer_aspire.find_aspire_python``); ``workdir``: where ASPIRE's files and
    ``logs/`` go (None: a new temp folder); ``log(line)``.

    Returns ``(volume, info)``: ``info`` has the class averages ``(n_classes, S, S)``, their
    quaternions (our convention, their own frame), ``class_centres`` (``(n_classes,)``:
    the index of the particle each average is centred on), ASPIRE's timings and
    ``wall_seconds``.
    Raises ``peer_aspire.AspireUnavailable`` (with the commands that install ASPIRE) when
    no environment has it, ``ValueError`` when there are too few particles.
    """
    s = settings or CommonLinesSettings()
    if s.selection not in CLASS_SELECTIONS:
        raise ValueError(f"selection must be one of {CLASS_SELECTIONS}, got {s.selection!r}")
    log = log or (lambda line: None)
    m, n_box = len(images), np.shape(images)[-1]
    size = min(int(s.image_size), n_box)
    need = min_particles(s.n_classes, size)
    if m < need:
        raise ValueError(f"{s.n_classes} class averages of {size} px particles need at least "
                         f"{need} particles; got {m}. Use more particles (or fewer classes).")
    if python is None:
        python, why = peer_aspire.find_aspire_python(
            os.environ.get(peer_aspire.ASPIRE_PYTHON_VAR))
        if python is None:
            raise peer_aspire.AspireUnavailable(why)
    small, small_px = _prepare(images, pixel_size, ctf, size)
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="orientlearn-classavg-"))
    os.makedirs(workdir, exist_ok=True)
    paths = [os.path.join(workdir, name) for name in
             (IMAGES_FILE, AVERAGES_FILE, ROTATIONS_FILE, INFO_FILE)]
    for p in paths[1:]:
        if os.path.exists(p):
            os.remove(p)
    np.save(paths[0], np.ascontiguousarray(small))
    runner = os.path.join(workdir, RUNNER_FILE)
    with open(runner, "w") as fh:
        fh.write(RUNNER)
    log(f"Class averages and common lines (ASPIRE, {python}): {m} particles at "
        f"{small.shape[-1]} px ({small_px:.3g} A/px)")
    info = peer_aspire.run_script(
        python, [runner, *paths, repr(small_px), str(int(s.n_classes)), str(int(s.n_nbor)),
                 str(int(s.n_theta)), str(int(s.seed)), *map(str, feature_counts(size)),
                 s.selection],
        workdir, log=log, expected=paths[1:])
    averages, rotations = np.load(paths[1]), np.load(paths[2])
    if rotations.shape != (len(averages), 3, 3) or not np.all(np.isfinite(rotations)):
        raise RuntimeError(f"ASPIRE returned rotations of shape {rotations.shape} for "
                           f"{len(averages)} class averages")
    q = peer_aspire.rotations_to_quaternions(rotations)
    volume = invert_averages(averages, q, small_px, diameter_A, s)
    if volume.shape[-1] != n_box:
        volume = volumes.resample_to_grid(volume, small_px, n_box, pixel_size)
    info.update(averages=averages, quaternions=q, pixel_size=small_px,
                class_centres=np.asarray(info["class_centres"], dtype=int))
    return volume.astype(np.float32), info


def invert_averages(averages, quaternions, pixel_size, diameter_A, settings=None):
    """The map ``(S, S, S)`` of class averages ``(n, S, S)`` at orientations
    ``quaternions (n, 4)`` (pixel size A): Fourier inversion, masked to the diameter,
    low-passed to ``settings.resolution_A`` (``CommonLinesSettings``), on their grid."""
    s = settings or CommonLinesSettings()
    size = averages.shape[-1]
    radius = min(size / 2.0 - 1.0, diameter_A / pixel_size / 2.0 + 2.0)
    vol = reconstruct_fourier(averages, quaternions, wiener_constant=1.0, mask_radius=radius)
    resolution = s.resolution_A or 4.0 * pixel_size
    return volumes.low_pass(vol, pixel_size, resolution)
