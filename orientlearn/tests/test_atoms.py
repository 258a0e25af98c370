"""core/atoms.py: density maps from atomic models (made in the test, no download)."""
import numpy as np
import pytest

from orientlearn.core import atoms
from orientlearn.tests.atomic_models import tiny_protein as _tiny_protein
from orientlearn.tests.atomic_models import write_pdb as _write_pdb
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def _map_moments(vol, pixel_size):
    """Centroid (A, x y z, relative to the box centre) and radius of gyration (A)."""
    n = vol.shape[0]
    w = np.clip(vol, 0, None)
    z, y, x = np.indices(vol.shape) - n // 2
    xyz = np.stack([x, y, z], -1).reshape(-1, 3) * pixel_size
    w = w.ravel() / w.sum()
    c = w @ xyz
    rg = np.sqrt(w @ np.sum((xyz - c) ** 2, axis=1))
    return c, rg


@pytest.mark.parametrize("name", ["tiny.pdb", "tiny.pdb.gz"])
def test_tiny_model_map_matches_atoms(tmp_path, name):
    pts = _tiny_protein()
    path = _write_pdb(tmp_path / name, pts, ["C"] * len(pts), cell=(5, 5, 5, 90, 90, 90))
    px = 1.0
    m = atoms.atoms_to_map(path, px, box=64)
    assert m.volume.shape == (64, 64, 64) and m.volume.dtype == np.float32
    assert m.n_atoms == len(pts)
    np.testing.assert_allclose(m.centre_A, pts.mean(0), atol=1e-2)
    c, rg = _map_moments(m.volume, px)
    # the atoms' centre of mass is at the box centre (within a fifth of a pixel)
    assert np.linalg.norm(c) < 0.2 * px, c
    rg_atoms = np.sqrt(np.mean(np.sum((pts - pts.mean(0)) ** 2, axis=1)))
    # each atom adds its own spread (form factor + B 10 + Nyquist low-pass): Rg within 10%
    assert abs(rg - rg_atoms) / rg_atoms < 0.10, (rg, rg_atoms)


def test_axes_are_z_y_x_and_mass_sits_where_the_atoms_are(tmp_path):
    # a heavy cluster on +x, a light one on -x: the density's centroid lies toward +x
    pts = np.array([[10.0, 0, 0]] * 4 + [[-10.0, 0, 0]] * 4) + np.random.default_rng(1).normal(
        0, 0.8, (8, 3))
    path = _write_pdb(tmp_path / "two.pdb", pts, ["S"] * 4 + ["C"] * 4)
    m = atoms.atoms_to_map(path, 1.0, box=48)
    vol = m.volume
    centred = np.arange(48) - 24
    var_x = vol.sum(axis=(0, 1)) @ centred ** 2
    var_z = vol.sum(axis=(1, 2)) @ centred ** 2
    assert var_x > 10 * var_z  # the molecule lies along x, the last array axis
    # the map centroid, back in the file frame, leans toward the sulphurs (they scatter
    # more than carbons, though less than in proportion to their atomic number)
    c, _ = _map_moments(vol, 1.0)
    z_weights = np.array([16.0] * 4 + [6.0] * 4)
    z_weighted = (z_weights[:, None] * pts).sum(0) / z_weights.sum()
    plain = pts.mean(0)
    got = c + m.centre_A
    assert plain[0] + 2.0 < got[0] < z_weighted[0] + 0.5, (got, plain, z_weighted)
    assert abs(got[1] - plain[1]) < 1.0 and abs(got[2] - plain[2]) < 1.0


def test_b_factor_blurs_and_resolution_lowpasses(tmp_path):
    pts = _tiny_protein(seed=2, n=30)
    path = _write_pdb(tmp_path / "t.pdb", pts, ["C"] * len(pts))
    sharp = atoms.atoms_to_map(path, 1.0, box=64).volume
    blurred = atoms.atoms_to_map(path, 1.0, box=64, b_factor=200.0).volume
    low = atoms.atoms_to_map(path, 1.0, box=64, resolution=8.0).volume
    assert blurred.max() < 0.6 * sharp.max()
    spec = np.abs(np.fft.fftshift(np.fft.fftn(low)))
    k = np.linalg.norm(np.indices(low.shape) - 32, axis=0) / 64.0  # 1/A at 1 A/px
    assert spec[k > 1 / 8.0].max() < 1e-3 * spec.max()
    # the integral (total scattering) is kept by blur and low-pass
    np.testing.assert_allclose(blurred.sum(), sharp.sum(), rtol=5e-3)
    np.testing.assert_allclose(low.sum(), sharp.sum(), rtol=5e-3)


def test_refusals(tmp_path):
    pts = _tiny_protein(n=20)
    path = _write_pdb(tmp_path / "t.pdb", pts, ["C"] * len(pts))
    with pytest.raises(ValueError, match="too small; use at least"):
        atoms.atoms_to_map(path, 1.0, box=16)
    with pytest.raises(ValueError, match="finer than Nyquist"):
        atoms.atoms_to_map(path, 2.0, resolution=3.0)
    with pytest.raises(ValueError, match="not found"):
        atoms.atoms_to_map(tmp_path / "missing.pdb", 1.0)
    bad = tmp_path / "bad.pdb"
    bad.write_text("HELLO\n")
    with pytest.raises(ValueError, match="no model|no atoms|Cannot read"):
        atoms.atoms_to_map(bad, 1.0)
    # default box: the smallest even box that holds the molecule
    m = atoms.atoms_to_map(path, 1.0)
    assert m.volume.shape[0] % 2 == 0 and m.volume.shape[0] * 1.0 > 2 * m.radius_A


def test_model_file_listing(tmp_path):
    for name in ["a.pdb", "b.cif.gz", "c.ent.gz"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    files = atoms.atomic_model_files(tmp_path)
    assert [f.split("/")[-1] for f in files] == ["a.pdb", "b.cif.gz", "c.ent.gz"]
    with pytest.raises(ValueError, match="not an atomic model"):
        atoms.atomic_model_files([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="No atomic model"):
        atoms.atomic_model_files([])
    with pytest.raises(ValueError, match="not found"):
        atoms.atomic_model_files(tmp_path / "missing")
