"""A generalist distance model: trained on many proteins, used on proteins it never saw.

Every protein is seen at a normalised scale (``scale.ParticleScaler``): its diameter spans
``fill * network_box`` pixels, whatever its size. Training data, per atomic model:

1. the diameter ``2 * radius`` of the atoms (the mask diameter a user would give) times a
   random factor in ``[1 - size_jitter, 1 + size_jitter]`` (users' diameters are rough)
   sets the network pixel size ``diameter / (fill * network_box)``;
2. the density map at that pixel size (``atoms.structure_to_map``, ``network_box``);
3. ``particles_per_protein`` projections with a CTF and shifts up to ``max_shift_fraction``
   of the box (``simulation.simulate_particles``);
4. during training, each image gets white noise: clean with probability
   ``clean_fraction``, else ``sigma^2`` log-uniform on ``[min_sigma2, max_sigma2]``
   (relative to unit-variance clean images; ``max_sigma2 = 64`` is SNR 1/64).

Before the network (training and use alike) particles are centred on their
reference-free centre of mass (``centering.centre_particles``) and phase-flipped with
their CTF. Pairs are only formed within a protein (``training.train_distance_model`` with
one set per protein). ``orient_particles`` is the use: centre, phase-flip, scale, embed
with the detector transforms, recover. Angles in radians, lengths in pixels unless a name
says ``_A``.

Status (README, "Unseen proteins"): trained at a 32 px box for 15 epochs on 50 chains,
the model is close to random on unseen proteins (median 1.6-2.1 rad noiseless); the
measurements point to a larger box and far longer training.
"""
import dataclasses
import time

import numpy as np

from . import atoms, image_ops, pipeline, simulation, training, volumes
from .ctf import ctf_2d_batch
from .model import DistanceModel
from .scale import DEFAULT_FILL, ParticleScaler
from .source import ArraySource

__all__ = ["GeneralistConfig", "map_particles", "noise_hook", "orient_particles", "phase_flip",
           "protein_particles", "simulate_training_sets", "train_generalist"]


@dataclasses.dataclass
class GeneralistConfig:
    """What a generalist is trained on (see the module docstring)."""
    network_box: int = 32
    fill: float = DEFAULT_FILL
    size_jitter: float = 0.15
    particles_per_protein: int = 200
    max_shift_fraction: float = 0.1
    phase_flip: bool = True                 # particles are phase-flipped (CTF signs undone)
    centre: bool = True                     # particles centred on their centre of mass
    residual_shift_fraction: float = 0.03   # random shifts after centring (of the box)
    defocus_range: tuple = (1.0e4, 3.0e4)   # A; None: no CTF
    clean_fraction: float = 0.2
    min_sigma2: float = 0.25
    max_sigma2: float = 64.0
    architecture: str = "resnet"
    width: int = 24
    n_features: int = 64
    head: str = "rotation"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    steps_per_epoch: int = None
    seed: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)


def protein_particles(structure, config, seed=0, name=None):
    """Clean training particles of one atomic model (a ``gemmi.Structure``).

    Returns a dict: ``images`` float32 ``(n, box, box)`` (with CTF and shifts, no noise),
    ``quaternions (n, 4)``, ``pixel_size`` (A, the network pixel size for this protein),
    ``diameter_A`` (the jittered diameter), ``name``."""
    rng = np.random.default_rng(seed)
    box = int(config.network_box)
    _, radius_A = atoms.molecule_extent(structure)
    diameter_A = 2.0 * radius_A * rng.uniform(1 - config.size_jitter, 1 + config.size_jitter)
    pixel_size = diameter_A / (config.fill * box)
    m = atoms.structure_to_map(structure, pixel_size, box=_map_box(structure, pixel_size, box))
    volume = volumes.crop_or_pad_volume(m.volume, box)
    return _particles(volume, pixel_size, diameter_A, config, rng, name or structure.name)


def map_particles(volume, voxel_size, diameter_A, config, seed=0, name="map"):
    """``protein_particles`` for a density map ``(N, N, N)`` of ``voxel_size`` A whose
    particle diameter is ``diameter_A`` (not jittered: a single-protein model)."""
    rng = np.random.default_rng(seed)
    box = int(config.network_box)
    pixel_size = diameter_A / (config.fill * box)
    n = volume.shape[0]
    new = max(8, round(n * voxel_size / pixel_size))
    vol = volumes.downsample_volume(volume, new) if new != n else volume
    vol = volumes.crop_or_pad_volume(vol, box)
    return _particles(vol, voxel_size * n / new, diameter_A, config, rng, name)


def _particles(volume, pixel_size, diameter_A, config, rng, name):
    box = volume.shape[0]
    sim = simulation.simulate_particles(
        volume, int(config.particles_per_protein), max_shift=config.max_shift_fraction * box,
        ctf=(None if config.defocus_range is None
             else dict(defocus_range=tuple(config.defocus_range))),
        voxel_size=pixel_size,
        seed=int(rng.integers(2 ** 31)), return_clean=False)
    images = sim["images"]
    if config.centre:
        images = centre_images(images, pixel_size, diameter_A / pixel_size, sim["ctf"])
    if config.residual_shift_fraction > 0:  # what centring leaves, roughly
        res = simulation.sample_shifts(len(images), config.residual_shift_fraction * box,
                                       seed=int(rng.integers(2 ** 31)))
        images = image_ops.shift_images(images, res)
    if config.phase_flip and sim["ctf"] is not None:
        images = phase_flip(images, pixel_size, sim["ctf"])
    return dict(images=images, quaternions=sim["quaternions"], pixel_size=pixel_size,
                diameter_A=diameter_A, name=name)


def centre_images(images, pixel_size, diameter_px, ctf_params=None):
    """Particles ``(M, S, S)`` moved so that their reference-free centre of mass
    (``centering.centre_particles``, CTF-corrected, within the particle's diameter) sits
    on the box centre. float32."""
    from .alignment_search import ParticleSpectra
    from .centering import centre_particles
    images = np.asarray(images, dtype=np.float32)
    spectra = ParticleSpectra(images, pixel_size=pixel_size, ctf=ctf_params)
    offsets, _ = centre_particles(spectra, max_shift=0.25 * images.shape[-1],
                                  diameter=float(diameter_px))
    return image_ops.shift_images(images, -offsets)


def phase_flip(images, pixel_size, ctf):
    """Images ``(M, S, S)`` with their spectra multiplied by the sign of their CTF (``ctf``:
    per-particle parameters, the keywords of ``ctf.ctf_2d_batch``): the contrast
    reversals undone, the CTF's amplitude left. float32."""
    images = np.asarray(images, dtype=np.float32)
    keys = ("defocus_u", "defocus_v", "astig_angle", "voltage", "cs", "amplitude_contrast",
            "phase_shift")
    ctfs = ctf_2d_batch(images.shape[-1], pixel_size, **{k: ctf[k] for k in keys if k in ctf})
    spec = np.fft.fft2(images) * np.sign(ctfs)
    return np.fft.ifft2(spec).real.astype(np.float32)


def _map_box(structure, pixel_size, box):
    """The network box, or the smallest box holding the molecule if that is larger (the
    map is then cropped: atoms beyond the box edge are cut, as a user's box cuts them)."""
    try:
        atoms.structure_to_map(structure, pixel_size, box=box)
        return box
    except ValueError:
        return None


def noise_hook(clean_fraction=0.2, min_sigma2=0.25, max_sigma2=64.0):
    """A ``ctf`` hook of ``training.train_distance_model``'s augmentation that adds white
    noise: per image, none with probability ``clean_fraction``, else ``sigma^2``
    log-uniform on ``[min_sigma2, max_sigma2]`` (images are standardised before)."""
    lo, hi = np.log(min_sigma2), np.log(max_sigma2)

    def hook(images, rng):
        n = len(images)
        sigma2 = np.exp(rng.uniform(lo, hi, n))
        sigma2[rng.random(n) < clean_fraction] = 0.0
        noise = rng.standard_normal(images.shape).astype(np.float32)
        return images + np.sqrt(sigma2).astype(np.float32)[:, None, None] * noise

    return hook


def simulate_training_sets(structures, config, names=None, progress=None):
    """``protein_particles`` of every atomic model, seeded from ``config.seed``."""
    names = names or [st.name for st in structures]
    seeds = np.random.SeedSequence(config.seed).spawn(len(structures))
    sets = []
    for k, (st, name) in enumerate(zip(structures, names)):
        sets.append(protein_particles(st, config, seed=int(seeds[k].generate_state(1)[0]),
                                      name=name))
        if progress is not None:
            progress(k + 1, len(structures))
    return sets


def train_generalist(structures, config, names=None, progress=None, log=print,
                     checkpoint_dir=None, sets=None):
    """Train a generalist on atomic models (``gemmi.Structure`` list), or on ready
    ``sets`` (``protein_particles`` / ``map_particles`` results).

    Returns ``(model, metadata)``: ``metadata`` is the model card's content (config,
    training proteins, network box, fill, pixel sizes, history, times)."""
    t0 = time.perf_counter()
    if sets is None:
        sets = simulate_training_sets(structures, config, names, progress)
    names = [s["name"] for s in sets]
    t_sim = time.perf_counter() - t0
    log(f"Simulated {sum(len(s['images']) for s in sets)} particles of {len(sets)} proteins "
        f"in {t_sim:.0f} s; pixel sizes {min(s['pixel_size'] for s in sets):.2f}-"
        f"{max(s['pixel_size'] for s in sets):.2f} A.")
    aug = dict(max_shift=0, noise_variance=(0.0, 0.0),
               ctf=noise_hook(config.clean_fraction, config.min_sigma2, config.max_sigma2))

    def on_epoch(epoch, n_epochs, logs):
        log(f"epoch {epoch}/{n_epochs}: {logs}")

    model, history = training.train_distance_model(
        [s["images"] for s in sets], [s["quaternions"] for s in sets],
        architecture=config.architecture, n_features=config.n_features, width=config.width,
        epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, patience=None, augmentation=aug,
        steps_per_epoch=config.steps_per_epoch, seed=config.seed, head=config.head,
        progress=on_epoch, checkpoint_dir=checkpoint_dir)
    meta = dict(kind="generalist", config=config.to_dict(), image_size=config.network_box,
                fill=config.fill, head=config.head, architecture=config.architecture,
                training_proteins=names,
                training_pixel_sizes=[float(s["pixel_size"]) for s in sets],
                history={k: v for k, v in history.items()},
                simulation_s=t_sim, training_s=time.perf_counter() - t0 - t_sim)
    return model, meta


def orient_particles(model, metadata, images, pixel_size, diameter_A, ctf=None, seed=0,
                     progress=None, **recover_kwargs):
    """Orientations of particles with a generalist: [phase flip], scale, embed, recover.

    ``images`` ``(N, S, S)`` at ``pixel_size`` (A); ``diameter_A`` the particle diameter
    (RELION's mask diameter); ``ctf`` the particles' CTF parameters (phase-flipped first
    when the model was trained on phase-flipped particles). After scaling, the images go
    through the recover protocol's calls (``pipeline.embed_particles`` +
    ``recover_from_embedding``, its defaults). Returns ``(q (N, 4), info)``, ``info`` from
    ``recovery.recover_from_features`` plus ``scaler``."""
    images = np.asarray(images, dtype=np.float32)
    config = metadata.get("config", {})
    if config.get("centre", False):
        images = centre_images(images, pixel_size, diameter_A / pixel_size, ctf)
    if ctf is not None and config.get("phase_flip", False):
        images = phase_flip(images, pixel_size, ctf)
    scaler = ParticleScaler(float(diameter_A), float(pixel_size), images.shape[-1],
                            int(metadata["image_size"]),
                            fill=float(metadata.get("fill", DEFAULT_FILL)))
    x = scaler(images)
    # On the network's grid now: the recover protocol's pipeline calls from here.
    bound = DistanceModel(model, metadata)
    transforms = pipeline.detector_transforms()
    feats = pipeline.embed_particles(ArraySource(x, bound.pixel_size or 1.0), bound,
                                     transforms)
    result = pipeline.recover_from_embedding(feats, transforms, bound.distance_map, seed=seed,
                                             progress=progress, **recover_kwargs)
    info = dict(result.info, scaler=scaler)
    return result.quaternions, info
