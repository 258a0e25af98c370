"""core/common_lines_map.py: the first map from the particles alone (class averages +
common lines, ASPIRE), and ab initio started from it.

- refusals: too few particles for the classes; an unknown class selection; no ASPIRE
  environment (the message names the commands that make one);
- with ASPIRE (skipped without it; ``pip install -e ".[test]"`` installs it): on noiseless
  particles with CTFs, the class averages are oriented close to the particles they are
  centred on, and the map is finite and on the particles' grid;
- ab initio with no model and no map runs from that map to oriented particles (slow).
"""
import os
from unittest import mock

import numpy as np
import pytest

from orientlearn.core import abinitio, alignment, common_lines_map, peer_aspire, simulation, volumes
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

MAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                   "5j0n.mrc")
DIAMETER_A = 280.0


def aspire_python():
    with mock.patch.dict(os.environ):
        os.environ.pop(peer_aspire.ASPIRE_PYTHON_VAR, None)
        return peer_aspire.find_aspire_python()[0]


needs_aspire = pytest.mark.skipif(aspire_python() is None, reason="ASPIRE is not installed")


@pytest.fixture(scope="module")
def particles():
    vol, voxel = volumes.read_volume(MAP)
    small = volumes.downsample_volume(vol, 32)
    px = voxel * vol.shape[0] / 32
    sim = simulation.simulate_particles(small, 400, ctf=True, voxel_size=px, seed=5,
                                        return_clean=False)
    return sim, px


def test_refusals(particles, tmp_path):
    sim, px = particles
    with pytest.raises(ValueError, match="need at least 200 particles"):
        common_lines_map.common_lines_map(sim["images"][:50], px, DIAMETER_A)
    with pytest.raises(ValueError, match="selection must be one of"):
        common_lines_map.common_lines_map(
            sim["images"], px, DIAMETER_A,
            settings=common_lines_map.CommonLinesSettings(selection="best"))
    missing = str(tmp_path / "nowhere" / "bin" / "python")
    with mock.patch.dict(os.environ, {peer_aspire.ASPIRE_PYTHON_VAR: missing}):
        with pytest.raises(peer_aspire.AspireUnavailable, match="peer_aspire create"):
            common_lines_map.common_lines_map(sim["images"], px, DIAMETER_A)


@needs_aspire
@pytest.mark.slow
def test_class_averages_are_oriented_on_noiseless_particles(particles, tmp_path):
    sim, px = particles
    settings = common_lines_map.CommonLinesSettings(n_classes=40, seed=0)
    vol, info = common_lines_map.common_lines_map(
        sim["images"], px, DIAMETER_A, ctf=sim["ctf"], settings=settings,
        python=aspire_python(), workdir=str(tmp_path))
    assert vol.shape == (32, 32, 32) and np.all(np.isfinite(vol)) and vol.std() > 0
    assert info["averages"].shape == (40, 32, 32)
    # Each average is centred on a particle (``class_centres``): its orientation is that
    # particle's, up to the common frame and hand; random would be ~2.3 rad.
    centres = info["class_centres"]
    assert centres.shape == (40,) and len(set(centres.tolist())) == 40
    q_true = sim["quaternions"][centres]
    _, q_al = alignment.align_rotation_handedness(q_true, info["quaternions"])
    err = np.median(alignment.orientation_errors(q_true, q_al))
    assert err < 0.35, err
    assert os.path.isdir(tmp_path / "logs")        # ASPIRE's logs stay in the work folder


@needs_aspire
@pytest.mark.slow
def test_ab_initio_without_model_or_map(particles, tmp_path):
    sim, px = particles
    settings = abinitio.AbInitioSettings(
        diameter_A=DIAMETER_A, start_shifts="zero", max_shift=1.0, refine_iterations=1,
        common_lines_classes=40, volume_particles=200, volume_epochs=1, recovery_steps=200,
        aspire_python=aspire_python())
    res = abinitio.run_ab_initio(sim["images"], px, None, None, settings, ctf=sim["ctf"],
                                 workdir=str(tmp_path))
    assert res.initial_volume.shape == (32, 32, 32)
    assert res.quaternions.shape == (400, 4) and np.all(np.isfinite(res.quaternions))
    assert res.model_meta["kind"] == "volume"
    first = res.history[0]
    assert first["common_lines_classes"] == 40 and first["common_lines_seconds"] > 0
    with pytest.raises(ValueError, match="initial volume"):
        abinitio.run_ab_initio(sim["images"], px, None, None,
                               abinitio.AbInitioSettings(diameter_A=DIAMETER_A,
                                                         common_lines_classes=0))
