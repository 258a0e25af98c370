"""The steps a user runs, written once: what protocols, CLI, demo and benchmarks call.

Every function takes a particle source (``source.ParticleSource``: images read in
batches, one record of orientation, shift and CTF per particle) and, where a network is
involved, a ``model.DistanceModel``; memory is bounded by the batch, not by the number of
particles (features are ``K x N x F`` float32, small; maps are ``N^3``).

* ``embed_particles``: features ``(K, N, F)`` of every particle under ``K`` image-side
  transforms (the D4 group of the detector, ``graph.image_transforms``).
* ``recover_particles``: embed, build the distance graph, recover the orientations
  (``recovery.recover_from_features``) with the product defaults ``RECOVERY_DEFAULTS``.
* ``reconstruct_halves``: one streamed pass over the particles into two Fourier
  accumulators (a seeded random half split); the full map is the sum of the halves'
  grids, the half-map FSC the gold-standard resolution.
* ``pair_distances``: estimated vs true distances of particle pairs (model evaluation).
"""
import numpy as np

from . import geometry

__all__ = ["RECOVERY_DEFAULTS", "RECONSTRUCTION_DEFAULTS", "detector_transforms",
           "embed_particles", "recover_particles", "recover_from_embedding", "Recovery",
           "reconstruct_halves", "HalfMaps", "half_split", "pair_distances", "check_images",
           "simulate_to_stack", "train_model", "TRAINING_DEFAULTS", "refine_particles"]

#: Defaults of the recovery (protocol form, CLI, demo and benchmarks share them).
RECOVERY_DEFAULTS = dict(n_neighbors=32, n_random=16, loss="cauchy", loss_scale=0.3,
                         n_steps=1500, learning_rate=0.05)
#: Defaults of the reconstruction.
RECONSTRUCTION_DEFAULTS = dict(symmetry="C1", wiener_constant=0.1, mask_radius=None,
                               oversampling=2)
#: Images per batch read from a source while embedding (the network runs on 8x that).
EMBED_BATCH = 128
#: Images per batch read from a source while reconstructing.
RECONSTRUCT_BATCH = 256


def detector_transforms(use_transforms=True):
    """``(K, 4)`` image-side transforms: the 8 of D4 (rotations by k 90 degrees, with and
    without the mirror), which pin the detector frame, or only the identity (the paper's
    setting, defined up to O(4))."""
    from .graph import image_transforms
    return (image_transforms(n_rotations=4, mirror=True)[0] if use_transforms
            else image_transforms(n_rotations=1, mirror=False)[0])


def check_images(images, start=0, what="Particle images", ids=None):
    """Raise ``ValueError`` naming the particles whose images are non-finite, constant or
    overflowing (``checks.image_defects``): ``ids`` (their identifiers, e.g. Scipion ids)
    or their 0-based positions ``start + i``."""
    from .checks import describe_image_defects, image_defects
    names = np.arange(start, start + len(images)) if ids is None else np.asarray(ids)
    messages = describe_image_defects(names, image_defects(images), what)
    if messages:
        raise ValueError(" ".join(messages))


def _check_batch(source, images, start):
    ids = getattr(source, "ids", None)
    check_images(images, start, ids=None if ids is None else ids[start:start + len(images)],
                 what="Particle images" if ids is not None else
                 "Particle images (0-based positions)")


def embed_particles(source, model, transforms=None, batch_size=EMBED_BATCH, progress=None):
    """Features ``(K, N, F)`` float32 of every particle of ``source`` under ``transforms``
    ``(K, 4)`` (default ``detector_transforms()``): each batch is read, checked for
    NaN, put on the model's grid (``DistanceModel.prepare``) and embedded under all
    transforms in one network call. ``progress(done, total)`` in particles."""
    transforms = detector_transforms() if transforms is None else np.asarray(transforms)
    out = np.empty((len(transforms), len(source), model.n_features), np.float32)
    for start, stop, images in source.batches(batch_size, progress):
        _check_batch(source, images, start)
        out[:, start:stop] = model.embed(model.prepare(images, source.pixel_size), transforms)
    return out


class Recovery:
    """Result of a recovery: ``quaternions (N, 4)``, ``residual (N,)`` (radians, the
    weighted mean ``|d_q - d_hat|`` over each particle's edges: a ground-truth-free
    confidence), ``loss`` (final L_OR), ``loss_history``, ``features (K, N, F)`` (None
    when recovered from given features), ``info`` (``recover_orientations``' dict)."""

    def __init__(self, quaternions, info, features=None):
        self.quaternions = quaternions
        self.residual = np.asarray(info["residual"], dtype=np.float64)
        self.loss = float(info["loss"])
        self.loss_history = np.asarray(info["loss_history"], dtype=np.float64)
        self.features = features
        self.info = info

    def __repr__(self):
        return (f"Recovery({len(self.quaternions)} particles, L_OR {self.loss:.4g}, median "
                f"residual {np.nanmedian(self.residual):.3f} rad)")


def recover_from_embedding(features, transforms, distance_map, seed=0, progress=None,
                           **options):
    """Orientations from features ``(K, N, F)`` (``embed_particles``): the distance graph
    (feature angles mapped to distances by ``distance_map``, e.g. a
    ``DistanceModel.distance_map``) and the recovery. ``options``: keywords of
    ``recovery.recover_from_features`` (defaults ``RECOVERY_DEFAULTS``)."""
    from .recovery import recover_from_features
    kw = dict(RECOVERY_DEFAULTS)
    kw.update(options)
    q, info = recover_from_features(features, transforms, distance_map=distance_map,
                                    seed=seed, progress=progress, **kw)
    return Recovery(q, info)


def recover_particles(source, model, use_transforms=True, seed=0, batch_size=EMBED_BATCH,
                      embed_progress=None, progress=None, **options):
    """Orientations of every particle of ``source`` from ``model`` (a ``DistanceModel``),
    with no ground truth: ``embed_particles`` under the detector transforms (all 8 of D4
    with ``use_transforms``, which leaves only a global rotation and the handedness
    undetermined; the identity only otherwise, up to O(4)), then
    ``recover_from_embedding``. Returns a ``Recovery`` (with its features)."""
    transforms = detector_transforms(use_transforms)
    features = embed_particles(source, model, transforms, batch_size, embed_progress)
    result = recover_from_embedding(features, transforms, model.distance_map, seed=seed,
                                    progress=progress, **options)
    result.features = features
    return result


# ------------------------------------------------------------------------ reconstruction

class HalfMaps:
    """Result of ``reconstruct_halves``: ``full``, ``half1``, ``half2`` ``(S, S, S)``
    float32 maps, ``frequencies`` (1/A) and ``fsc`` of the halves, ``half`` ``(N,)`` the
    half (0 or 1) of each particle, ``pixel_size`` (A)."""

    def __init__(self, full, half1, half2, frequencies, fsc, half, pixel_size):
        self.full, self.half1, self.half2 = full, half1, half2
        self.frequencies, self.fsc, self.half = frequencies, fsc, half
        self.pixel_size = pixel_size

    def resolution(self, threshold=0.143):
        """Half-map resolution (A) where the FSC drops below ``threshold``."""
        from .fsc import resolution_at
        return resolution_at(self.frequencies, self.fsc, threshold)


def half_split(n, seed=0):
    """``(n,)`` int: a seeded random split of ``n`` particles into halves 0 and 1 of
    sizes ``ceil(n / 2)`` and ``floor(n / 2)``."""
    return (np.random.default_rng(seed).permutation(int(n)) % 2).astype(np.int8)


def _ctf_callable(source, particles):
    """``ctfs(indices, size)`` of ``FourierAccumulator.insert``: the exact CTFs of
    ``particles[indices]`` on the padded grid (same pixel size, finer frequency step)."""
    def ctfs(indices, size):
        return source.ctf_images(particles[indices], size)
    return ctfs


def reconstruct_halves(source, symmetry="C1", ctf=True, wiener_constant=0.1,
                       mask_radius=None, oversampling=2, seed=0,
                       batch_size=RECONSTRUCT_BATCH, n_threads=None, progress=None):
    """Two half maps and the full map of the oriented particles of ``source``, one pass.

    Each batch is read once and inserted into the Fourier accumulator of its half
    (``half_split(N, seed)``), with its shifts undone and, with ``ctf`` and a source
    carrying CTF parameters, its exact CTF (``ctf_2d_batch`` on the padded grid) for the
    Wiener-like correction. The full map is made from the SUM of the two accumulators
    (so it is exactly what one reconstruction of all particles gives). ``symmetry``: point
    group applied when inserting; ``mask_radius`` (px): soft spherical mask of all maps.
    ``progress(done, total)`` in particles. Returns ``HalfMaps``.
    """
    from .fsc import fsc
    from .reconstruction import FourierAccumulator
    if source.quaternions is None:
        raise ValueError("The particles carry no orientations: recover or import them first.")
    if len(source) < 2:
        raise ValueError("Half maps need at least 2 particles.")
    half = half_split(len(source), seed)
    size = source.image_size
    accs = [FourierAccumulator(size, symmetry=symmetry, oversampling=oversampling,
                               n_threads=n_threads) for _ in range(2)]
    use_ctf = bool(ctf) and source.ctf is not None
    R = geometry.quaternion_to_matrix(source.quaternions)
    for start, stop, images in source.batches(batch_size, progress):
        _check_batch(source, images, start)
        for h in (0, 1):
            sel = start + np.flatnonzero(half[start:stop] == h)
            if not len(sel):
                continue
            accs[h].insert(images[sel - start], R[sel], shifts=source.shifts[sel],
                           ctfs=_ctf_callable(source, sel) if use_ctf else None)
    maps = [a.volume(wiener_constant, mask_radius) for a in accs]
    accs[0].add(accs[1])
    full = accs[0].volume(wiener_constant, mask_radius)
    frequencies, values = fsc(maps[0], maps[1], pixel_size=source.pixel_size)
    return HalfMaps(full, maps[0], maps[1], frequencies, values, half, source.pixel_size)


# ------------------------------------------------------------------------------ training

#: Defaults of the training (protocol form and CLI share them).
TRAINING_DEFAULTS = dict(architecture="resnet", head="rotation", n_features=64, epochs=30,
                         batch_size=64, learning_rate=1e-3, loss="mse",
                         validation_fraction=0.2, patience=8)
#: Box (px) of the network's images by default.
TRAINING_IMAGE_SIZE = 64


def train_model(sources, image_size=TRAINING_IMAGE_SIZE, symmetry="C1", seed=0,
                progress=None, checkpoint_dir=None, augmentation=None, **options):
    """A ``DistanceModel`` trained on oriented particles.

    ``sources``: one ``ParticleSource`` or a list (one training set each, all with
    orientations and the same box in Angstrom). Their images are read whole (training
    draws random batches) and Fourier-resampled to ``image_size`` px, so the model's
    pixel size is ``pixel_size * S / image_size``. ``options``: keywords of
    ``training.train_distance_model`` (defaults ``TRAINING_DEFAULTS``). Returns
    ``(model, history)``; the model's metadata holds its grid, head and training summary.
    """
    from .image_ops import downsample
    from .model import DistanceModel
    from .training import train_distance_model
    sources = [sources] if hasattr(sources, "images") else list(sources)
    kw = dict(TRAINING_DEFAULTS)
    kw.update(options)
    images, quats = [], []
    for k, src in enumerate(sources):
        if src.quaternions is None:
            raise ValueError(f"Training set {k + 1} carries no orientations.")
        imgs = src.images()
        _check_batch(src, imgs, 0)
        images.append(imgs if imgs.shape[-1] == image_size else downsample(imgs, image_size))
        quats.append(src.quaternions)
    first = sources[0]
    net, history = train_distance_model(images, quats, symmetry=symmetry, seed=seed,
                                        progress=progress, checkpoint_dir=checkpoint_dir,
                                        augmentation=augmentation, **kw)
    meta = dict(image_size=int(image_size),
                pixel_size=first.pixel_size * first.image_size / image_size,
                symmetry=symmetry, architecture=kw["architecture"], head=kw["head"],
                n_features=int(kw["n_features"]), n_particles=int(sum(map(len, sources))),
                seed=seed)
    return DistanceModel(net, meta), history


# ---------------------------------------------------------------------------- evaluation

def pair_distances(source, model, pairs=None, symmetry="C1", seed=0,
                   max_particles=400, batch_size=EMBED_BATCH):
    """Estimated and true distances of particle pairs (the paper's Fig. 6 data).

    ``source`` must carry orientations. ``pairs`` ``(P, 2)`` particle indices, default
    every pair among up to ``max_particles`` particles drawn with ``seed``. Returns
    ``(d_true (P,), d_est (P,))`` radians (``d_true`` up to ``symmetry``)."""
    if source.quaternions is None:
        raise ValueError("Pair evaluation needs particles with known orientations.")
    rng = np.random.default_rng(seed)
    if pairs is None:
        sel = np.sort(rng.choice(len(source), size=min(len(source), max_particles),
                                 replace=False))
        a, b = np.triu_indices(len(sel), k=1)
        pairs = np.stack([sel[a], sel[b]], axis=1)
    pairs = np.asarray(pairs, dtype=np.int64)
    used, inverse = np.unique(pairs.ravel(), return_inverse=True)
    feats = np.concatenate([model.embed(model.prepare(source.take(used[b:b + batch_size]),
                                                      source.pixel_size))[0]
                            for b in range(0, len(used), batch_size)])
    fa, fb = feats[inverse[0::2]], feats[inverse[1::2]]
    d_est = model.pair_distances(fa, fb)
    group = geometry.symmetry_group(symmetry)
    q = source.quaternions
    d_true = geometry.symmetric_distance(q[pairs[:, 0]], q[pairs[:, 1]], group)
    return d_true, d_est


# ---------------------------------------------------------------------------- simulation

SIMULATION_CHUNK = 2048


def simulate_to_stack(volume, n, stack_path, image_size=None, voxel_size=1.0, symmetry="C1",
                      max_shift=0.0, ctf=None, sigma2=None, snr_db=None, seed=0,
                      oversampling=2, chunk_size=SIMULATION_CHUNK, progress=None):
    """Simulate ``n`` particles of ``volume`` straight to an MRC stack, ``chunk_size`` at a
    time (memory: one chunk, whatever ``n``). Returns an ``MrcSource`` over the stack
    with the true orientations, shifts and CTF as its records.

    Chunk ``c`` is ``simulation.simulate_particles`` (same arguments) with seed
    ``[seed, c]``; the projections' scale (unit mean variance of the clean images) is
    measured on the first chunk and kept for the others, so the noise level ``sigma2``
    means the same everywhere. With ``n <= chunk_size`` this is one
    ``simulate_particles(..., seed=[seed, 0])`` call. ``progress(done, total)``.
    """
    from .simulation import simulate_particles
    from .source import MrcSource, StackWriter
    size = volume.shape[0] if image_size is None else int(image_size)
    pixel_size = voxel_size * volume.shape[0] / size
    quats, shifts, ctfs = [], [], []
    scale = None
    with StackWriter(stack_path, n, size, pixel_size) as writer:
        for c, start in enumerate(range(0, int(n), int(chunk_size))):
            stop = min(int(n), start + int(chunk_size))
            sim = simulate_particles(volume, stop - start, image_size=size, symmetry=symmetry,
                                     max_shift=max_shift, ctf=ctf, sigma2=sigma2,
                                     snr_db=snr_db, seed=[int(seed), c], voxel_size=voxel_size,
                                     oversampling=oversampling, return_clean=False,
                                     scale=scale)
            scale = sim["scale"]
            writer.write(start, sim["images"])
            quats.append(sim["quaternions"])
            shifts.append(sim["shifts"])
            ctfs.append(sim["ctf"])
            if progress is not None:
                progress(stop, int(n))
    ctf_all = None
    if ctfs[0] is not None:
        ctf_all = {k: (np.concatenate([np.broadcast_to(c[k], (len(q),))
                                       for c, q in zip(ctfs, quats)])
                       if k in ("defocus_u", "defocus_v", "astig_angle") else v)
                   for k, v in ctfs[0].items()}
    return MrcSource(stack_path, pixel_size=pixel_size, quaternions=np.concatenate(quats),
                     shifts=np.concatenate(shifts), ctf=ctf_all)


# ----------------------------------------------------------------------------- refinement

def refine_particles(source, settings=None, ctf=True, initial_map=None, start_shifts="input",
                     diameter=None, log=None, progress=None):
    """Gold-standard local refinement of the oriented particles of ``source``: what the
    refine protocol runs (``refinement.refine_particles``).

    Starts from the source's orientations and shifts (``start_shifts``: ``'input'``,
    ``'centre of mass'`` with ``diameter`` px, or ``'zero'``); ``ctf``: use the source's
    CTF parameters when it has them; ``initial_map``: optional ``(N, N, N)`` start;
    ``settings``: ``refinement.RefinementSettings``. The particles' spectra are held in
    memory (about 12 bytes per pixel). Returns a ``refinement.RefinementResult``.
    """
    from . import refinement
    if source.quaternions is None:
        raise ValueError("The particles carry no orientations: recover or import them first.")
    return refinement.refine_particles(
        source.images(), source.pixel_size, source.quaternions, shifts=source.shifts,
        ctf=source.ctf if ctf else None, initial_map=initial_map, settings=settings,
        start_shifts=start_shifts, diameter=diameter, log=log, progress=progress)
