"""core/generalist.py: a generalist trained on 3 tiny pseudo-proteins orients a 4th."""
import numpy as np
import pytest

from orientlearn.core import alignment, atoms, generalist, simulation
from orientlearn.tests.atomic_models import pseudo_protein
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def _user_particles(structure, n, user_box=32, seed=5):
    """Particles of ``structure`` as a user has them: diameter half the box, CTF."""
    _, radius = atoms.molecule_extent(structure)
    diameter = 2.0 * radius
    pixel_size = diameter / (0.5 * user_box)
    vol = atoms.structure_to_map(structure, pixel_size, box=user_box).volume
    sim = simulation.simulate_particles(vol, n, voxel_size=pixel_size, max_shift=1.0,
                                     ctf=dict(defocus_range=(1e4, 3e4)), seed=seed,
                                     return_clean=False)
    return sim, pixel_size, diameter


def test_training_particles_fill_the_box_at_the_normalised_scale():
    config = generalist.GeneralistConfig(network_box=32, particles_per_protein=20, size_jitter=0.0)
    st = pseudo_protein(1)
    sets = generalist.protein_particles(st, config, seed=0)
    _, radius = atoms.molecule_extent(st)
    assert sets["images"].shape == (20, 32, 32)
    np.testing.assert_allclose(sets["pixel_size"], 2 * radius / (config.fill * 32), rtol=1e-6)


def test_noise_hook_levels():
    hook = generalist.noise_hook(clean_fraction=0.5, min_sigma2=1.0, max_sigma2=64.0)
    rng = np.random.default_rng(0)
    out = hook(np.zeros((2000, 8, 8), np.float32), rng)
    var = out.reshape(2000, -1).var(axis=1)
    clean = var == 0
    assert 0.4 < clean.mean() < 0.6
    assert var[~clean].min() > 0.3 and var[~clean].max() < 64 * 2
    assert np.median(var[~clean]) < 16  # log-uniform: the median is sqrt(1 * 64) = 8


def test_phase_flip_and_centring():
    sim, pixel_size, diameter = _user_particles(pseudo_protein(2), 6)
    flipped = generalist.phase_flip(sim["images"], pixel_size, sim["ctf"])
    # flipping twice gives the particles back (the CTF sign squared is 1)
    np.testing.assert_allclose(generalist.phase_flip(flipped, pixel_size, sim["ctf"]),
                               sim["images"], atol=2e-3)
    # a blob 3 px off-centre is moved back to the centre
    y, x = np.indices((32, 32)) - 16
    blob = np.exp(-((x - 3.0) ** 2 + (y + 2.0) ** 2) / 18.0)[None].astype(np.float32)
    centred = generalist.centre_images(blob, 1.0, 12.0)[0]
    w = centred.clip(0) / centred.clip(0).sum()
    assert abs((w * x).sum()) < 0.2 and abs((w * y).sum()) < 0.2


@pytest.mark.slow
def test_generalist_orients_an_unseen_protein():
    config = generalist.GeneralistConfig(
        network_box=24, particles_per_protein=400, epochs=15, clean_fraction=1.0,
        max_shift_fraction=0.05, size_jitter=0.05, width=16, seed=0)
    model, meta = generalist.train_generalist([pseudo_protein(s) for s in (1, 2, 3)], config,
                                              log=lambda msg: None)
    sim, pixel_size, diameter = _user_particles(pseudo_protein(4), 200)
    q, _ = generalist.orient_particles(model, meta, sim["images"], pixel_size, diameter,
                                       ctf=sim["ctf"])
    median = alignment.compare_orientations(sim["quaternions"], q)["rot_median"]
    assert median < 1.6, median  # random orientations: 2.31 rad
