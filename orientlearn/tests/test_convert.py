"""Scipion ALIGN_PROJ convention of ``orientlearn.convert``, checked through other packages.

Our convention (``core/geometry.py``): orientation ``R`` images ``V`` as
``p(x, y) = integral V(R^T (x, y, z)) dz``; a particle whose centre sits at ``t = (tx, ty)``
pixels from the box centre is stored as ``M = inv([[R, t], [0, 1]])``.

What Relion means, from Relion's own source (src/euler.cpp, src/projector.cpp,
src/backprojector.cpp, src/apps/project.cpp):

* ``Euler_angles2matrix(rot, tilt, psi)`` gives ``A`` (ZYZ; formula in
  ``relion_euler_matrix`` below, copied term by term from euler.cpp).
* The projector samples the 3-D spectrum at ``A^T (kx, ky, 0)``
  (``Ainv = A.transpose(); xp = Ainv(0,0) * x + Ainv(0,1) * y; ...``), so by the Fourier
  slice theorem ``p(x, y) = integral V(A^T (x, y, z)) dz``: Relion's ``A`` is our ``R``.
* ``relion_project`` shifts each projection by ``(-rlnOriginX, -rlnOriginY)``
  (``XX(shift) = -xoff; YY(shift) = -yoff; shiftImageInFourierTransform(...)``; that
  function multiplies by ``exp(-2 pi i k.s / N)``, the FFTW-sign phase ramp that moves
  content by ``+s``). So the particle lies at ``-origin``: our ``t`` must be
  ``-rlnOrigin / pixel size``. Scipion's Relion converter agrees independently: its
  reader builds ``M = inv(euler_matrix(-angles, 'szyz') with translation -origin)``
  (scipion-em-relion ``convert31.Reader.__setParticleTransformProj``), i.e.
  ``inv(M) = [[A, -origin], [0, 1]]``, which is our ``inv(M) = [[R, t], [0, 1]]``.

The tests send our orientations through Scipion's converters (scipion-em-relion's star
Writer/Reader when installed, and the Xmipp-style ``geometryFromMatrix`` formula otherwise)
and compare what comes out with Relion's definitions above, including the image Relion
would predict for those angles and origins against our own projector.
"""
import os

import numpy as np
import pwem.objects as emobj
import pytest
from pwem.constants import ALIGN_PROJ
from pwem.convert import transformations as tfs

from orientlearn import convert
from orientlearn.core import geometry, image_ops, projection
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

PIXEL_SIZE = 2.0            # A/pixel: not 1, so that Angstrom/pixel mix-ups show
BOX = 32                    # pixels
N_PARTICLES = 6


def relion_euler_matrix(rot, tilt, psi):
    """Relion's ``Euler_angles2matrix`` (src/euler.cpp); angles in degrees, ``(3, 3)``."""
    alpha, beta, gamma = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = (np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta),
                              np.cos(gamma), np.sin(gamma))
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def xmipp_geometry_from_matrix(matrix):
    """``(shifts (3,), angles (3,) degrees)`` of an ALIGN_PROJ matrix, as Scipion's Xmipp
    and Relion plugins compute them (``geometryFromMatrix(matrix, inverseTransform=True)``
    in scipion-em-xmipp xmipp3/convert and scipion-em-relion convert_deprecated, and
    ``Writer._alignProjToRow`` in convert31): re-stated with pwem's transformations."""
    inverse = np.linalg.inv(matrix)
    shifts = -tfs.translation_from_matrix(inverse)
    angles = -np.rad2deg(tfs.euler_from_matrix(inverse, axes="szyz"))
    return shifts, angles


def _orientations(seed=3):
    """Random orientations plus edge cases (identity, tilt = 90 and 180 degrees)."""
    quats = geometry.uniform_quaternions(N_PARTICLES, seed=seed)
    quats[0] = [1.0, 0.0, 0.0, 0.0]
    quats[1] = geometry.matrix_to_quaternion(
        geometry.euler_to_matrix(np.deg2rad(30.0), np.deg2rad(90.0), np.deg2rad(-50.0)))
    quats[2] = geometry.matrix_to_quaternion(
        geometry.euler_to_matrix(0.0, np.pi, np.deg2rad(20.0)))
    # |t| in [1.5, 3] px: big enough that a wrong sign shows in the images.
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0.0, 2 * np.pi, N_PARTICLES)
    shifts = rng.uniform(1.5, 3.0, N_PARTICLES)[:, None] * np.stack([np.cos(phi), np.sin(phi)], 1)
    shifts[0] = [2.0, -1.0]            # an easy one to read in a failure message
    return quats, shifts


def _make_particles(folder, quats, shifts, images=None):
    """A SetOfParticles (sqlite in ``folder``) over an MRC stack, with ALIGN_PROJ."""
    stack = os.path.join(str(folder), "particles.mrcs")
    if images is None:
        images = np.zeros((len(quats), BOX, BOX), dtype=np.float32)
    convert.write_stack(stack, images, PIXEL_SIZE)
    acq = emobj.Acquisition(voltage=300.0, sphericalAberration=2.7,
                            amplitudeContrast=0.1, magnification=50000)
    parts = emobj.SetOfParticles(filename=os.path.join(str(folder), "particles.sqlite"))
    parts.setSamplingRate(PIXEL_SIZE)
    parts.setAcquisition(acq)
    parts.setAlignmentProj()
    for i in range(len(quats)):
        p = emobj.Particle(location=(i + 1, stack))
        p.setSamplingRate(PIXEL_SIZE)
        p.setAcquisition(acq.clone())
        convert.set_particle_orientation(p, quats[i], shifts[i])
        parts.append(p)
    parts.write()
    return parts


def _same_orientation(q1, q2):
    return geometry.distance(np.asarray(q1), np.asarray(q2))


# ------------------------------------------------------------------ our own round trip

def test_sqlite_round_trip(tmp_path):
    quats, shifts = _orientations()
    parts = _make_particles(tmp_path, quats, shifts)
    filename = parts.getFileName()
    parts.close()

    reread = emobj.SetOfParticles(filename=filename)
    reread.loadAllProperties()         # set-level attributes (alignment, sampling) from disk
    assert reread.getSamplingRate() == pytest.approx(PIXEL_SIZE)
    assert reread.getAlignment() == ALIGN_PROJ
    assert convert.has_projection_alignment(reread)
    ids, q_back, t_back = convert.particle_orientations(reread)
    reread.close()

    assert list(ids) == list(range(1, N_PARTICLES + 1))
    np.testing.assert_allclose(_same_orientation(q_back, quats), 0.0, atol=1e-6)
    np.testing.assert_allclose(t_back, shifts, atol=1e-9)


def test_transform_is_inverse_of_R_t():
    """``M = inv([[R, t], [0, 1]])`` literally, and ``scipion_transform_to_matrix`` undoes it."""
    quats, shifts = _orientations()
    R = geometry.quaternion_to_matrix(quats)
    M = geometry.matrix_to_scipion_transform(R, shifts)
    forward = np.zeros((N_PARTICLES, 4, 4))
    forward[:, :3, :3] = R
    forward[:, :2, 3] = shifts
    forward[:, 3, 3] = 1.0
    np.testing.assert_allclose(M @ forward, np.broadcast_to(np.eye(4), M.shape), atol=1e-12)
    R_back, t_back = geometry.scipion_transform_to_matrix(M)
    np.testing.assert_allclose(R_back, R, atol=1e-12)
    np.testing.assert_allclose(t_back, shifts, atol=1e-12)


# --------------------------------------------------- Scipion's Xmipp/Relion formula (no plugin)

def test_xmipp_style_geometry_matches_relion_definitions():
    quats, shifts = _orientations()
    R = geometry.quaternion_to_matrix(quats)
    for i in range(N_PARTICLES):
        M = geometry.matrix_to_scipion_transform(R[i], shifts[i])
        origin, angles = xmipp_geometry_from_matrix(M)
        # Relion's matrix of the exported angles is our R ...
        np.testing.assert_allclose(relion_euler_matrix(*angles), R[i], atol=1e-9)
        # ... and our euler_to_matrix agrees with it (angles in radians there).
        np.testing.assert_allclose(geometry.euler_to_matrix(*np.deg2rad(angles)), R[i],
                                   atol=1e-9)
        # Particle at -origin (see module docstring): t = -origin, no z component.
        np.testing.assert_allclose(origin[:2], -shifts[i], atol=1e-9)
        assert abs(origin[2]) < 1e-9


# ------------------------------------------------------------- scipion-em-relion converter

def _relion_star_rows(parts, folder):
    """``(ids, angles (N, 3) degrees, origins (N, 2) pixels)`` from a star file written by
    scipion-em-relion's Writer (its ``_alignProjToRow``) for ``parts``."""
    relion_convert = pytest.importorskip(
        "relion.convert", reason="scipion-em-relion not installed (pip install scipion-em-relion)")
    from emtable import Table
    star = os.path.join(str(folder), "particles.star")
    relion_convert.writeSetOfParticles(parts, star)
    optics = Table(fileName=star, tableName="optics")
    assert float(optics[0].rlnImagePixelSize) == pytest.approx(PIXEL_SIZE)
    rows = list(Table(fileName=star, tableName="particles"))
    ids = np.array([int(r.rlnImageId) for r in rows])
    angles = np.array([[float(r.rlnAngleRot), float(r.rlnAngleTilt), float(r.rlnAnglePsi)]
                       for r in rows])
    # Relion >= 3.1 stores origins in Angstrom.
    origins = np.array([[float(r.rlnOriginXAngst), float(r.rlnOriginYAngst)]
                        for r in rows]) / PIXEL_SIZE
    assert all(abs(float(r.rlnOriginZAngst)) < 1e-6 for r in rows)
    return ids, angles, origins, star


def test_relion_writer_gives_relion_angles_and_origins(tmp_path):
    quats, shifts = _orientations()
    parts = _make_particles(tmp_path, quats, shifts)
    ids, angles, origins, _ = _relion_star_rows(parts, tmp_path)
    assert list(ids) == list(range(1, N_PARTICLES + 1))
    R = geometry.quaternion_to_matrix(quats)
    for i in range(N_PARTICLES):
        # The star file keeps 6 decimals of a degree: 1e-5 rad-scale agreement.
        np.testing.assert_allclose(relion_euler_matrix(*angles[i]), R[i], atol=1e-5)
    np.testing.assert_allclose(origins, -shifts, atol=1e-5)


def test_relion_reader_round_trip(tmp_path):
    """Ours -> Relion star (plugin Writer) -> Scipion set (plugin Reader) -> ours."""
    quats, shifts = _orientations()
    parts = _make_particles(tmp_path, quats, shifts)
    _, _, _, star = _relion_star_rows(parts, tmp_path)
    from relion.convert import readSetOfParticles
    back = emobj.SetOfParticles(filename=os.path.join(str(tmp_path), "from_star.sqlite"))
    readSetOfParticles(star, back, alignType=ALIGN_PROJ)
    back.write()
    ids, q_back, t_back = convert.particle_orientations(back)
    back.close()
    assert list(ids) == list(range(1, N_PARTICLES + 1))
    np.testing.assert_allclose(_same_orientation(q_back, quats), 0.0, atol=1e-5)
    np.testing.assert_allclose(t_back, shifts, atol=1e-5)


def test_core_star_reader_reads_what_the_relion_plugin_writes(tmp_path):
    """core.source.read_star (no Scipion) on scipion-em-relion's star file: same
    orientations, shifts, pixel size and image locations as the Scipion set."""
    from orientlearn.core.source import read_star
    quats, shifts = _orientations()
    images = np.random.default_rng(0).standard_normal((N_PARTICLES, BOX, BOX)).astype(np.float32)
    parts = _make_particles(tmp_path, quats, shifts, images=images)
    _, _, _, star = _relion_star_rows(parts, tmp_path)
    src = read_star(star)
    assert src.pixel_size == pytest.approx(PIXEL_SIZE)
    np.testing.assert_allclose(_same_orientation(src.quaternions, quats), 0.0, atol=1e-5)
    np.testing.assert_allclose(src.shifts, shifts, atol=1e-5)
    np.testing.assert_array_equal(src.images(), images)


# ------------------------------------------------ images: Relion's model vs our projector

# A few Gaussian blobs, placed asymmetrically, so any wrong rotation or shift shows.
_BLOB_CENTRES = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-2.0, 7.0, 3.0],
                          [1.0, -3.0, 8.0]])          # (x, y, z) voxels from the box centre
_BLOB_WEIGHTS = np.array([1.0, 0.8, 0.6, 0.4])
_BLOB_SIGMA = 1.5                                     # voxels


def _blob_volume():
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((BOX, BOX, BOX))
    for (cx, cy, cz), w in zip(_BLOB_CENTRES, _BLOB_WEIGHTS):
        vol += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
                          / (2 * _BLOB_SIGMA ** 2))
    return vol


def _relion_model_image(A, origin):
    """The exact projection Relion predicts for matrix ``A`` and origin (pixels): the line
    integral of ``V(A^T r)`` puts blob ``c`` at ``(A c)_xy``, then the image moves by
    ``-origin``. ``img[y, x]``, centre at ``BOX // 2``."""
    c = np.arange(BOX) - BOX // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.zeros((BOX, BOX))
    for centre, w in zip(_BLOB_CENTRES, _BLOB_WEIGHTS):
        px, py = (A @ centre)[:2] - origin
        img += (w * np.sqrt(2 * np.pi) * _BLOB_SIGMA
                * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * _BLOB_SIGMA ** 2)))
    return img


def _relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("source", ["xmipp-formula", "relion-plugin"])
def test_our_projection_is_the_image_relion_predicts(tmp_path, source):
    quats, shifts = _orientations()
    R = geometry.quaternion_to_matrix(quats)
    ours = image_ops.shift_images(projection.project(_blob_volume(), R), shifts)
    parts = _make_particles(tmp_path, quats, shifts, images=ours)
    if source == "relion-plugin":
        _, angles, origins, _ = _relion_star_rows(parts, tmp_path)
    else:
        geo = [xmipp_geometry_from_matrix(p.getTransform().getMatrix())
               for p in parts.iterItems(orderBy="id")]
        origins = np.array([g[0][:2] for g in geo])
        angles = np.array([g[1] for g in geo])
    parts.close()

    for i in range(N_PARTICLES):
        A = relion_euler_matrix(*angles[i])
        expected = _relion_model_image(A, origins[i])
        assert _relative_error(ours[i], expected) < 0.03, i
        # The check can tell conventions apart: the transposed rotation or the opposite
        # origin sign gives a clearly different image (rotations by 0 or pi are
        # symmetric matrices, so transposing them changes nothing: skip those).
        if np.abs(A - A.T).max() > 0.1:
            assert _relative_error(ours[i], _relion_model_image(A.T, origins[i])) > 0.3, i
        assert _relative_error(ours[i], _relion_model_image(A, -origins[i])) > 0.3, i


# ------------------------------------------------------- copies keep the input shifts

class _FakeProtocol:
    """What ``copy_particles_with_orientations`` needs of a protocol: a set factory."""

    def __init__(self, folder):
        self.folder = str(folder)

    def _createSetOfParticles(self, suffix=""):
        return emobj.SetOfParticles(
            filename=os.path.join(self.folder, f"copy{suffix}.sqlite"))


def test_copy_keeps_input_projection_shifts(tmp_path):
    quats, shifts = _orientations()
    parts = _make_particles(tmp_path, quats, shifts)
    new_q = geometry.uniform_quaternions(N_PARTICLES, seed=11)
    out = convert.copy_particles_with_orientations(_FakeProtocol(tmp_path), parts, new_q)
    _, q_back, t_back = convert.particle_orientations(out)
    np.testing.assert_allclose(t_back, shifts, atol=1e-9)
    np.testing.assert_allclose(_same_orientation(q_back, new_q), 0.0, atol=1e-6)
    # Explicit shifts replace them.
    out2 = convert.copy_particles_with_orientations(_FakeProtocol(tmp_path), parts, new_q,
                                                    shifts=-shifts, suffix="2")
    np.testing.assert_allclose(convert.particle_orientations(out2)[2], -shifts, atol=1e-9)


def test_copy_keeps_2d_alignment_shifts(tmp_path):
    """Particles from a 2-D alignment (read by scipion-em-relion's Reader as ALIGN_2D)
    keep their offsets: the same ``t`` as the 3-D convention gives for that star file."""
    quats, shifts = _orientations()
    parts = _make_particles(tmp_path, quats, shifts)
    _, _, origins, star = _relion_star_rows(parts, tmp_path)
    from pwem.constants import ALIGN_2D
    from relion.convert import readSetOfParticles
    two_d = emobj.SetOfParticles(filename=os.path.join(str(tmp_path), "aligned2d.sqlite"))
    readSetOfParticles(star, two_d, alignType=ALIGN_2D)
    two_d.setAlignment2D()
    np.testing.assert_allclose(convert.particle_shifts(two_d), -origins, atol=1e-5)
    out = convert.copy_particles_with_orientations(_FakeProtocol(tmp_path), two_d, quats)
    np.testing.assert_allclose(convert.particle_orientations(out)[2], shifts, atol=1e-5)


def test_particles_without_alignment_have_zero_shifts(tmp_path):
    stack = os.path.join(str(tmp_path), "plain.mrcs")
    convert.write_stack(stack, np.zeros((3, BOX, BOX), dtype=np.float32), PIXEL_SIZE)
    parts = emobj.SetOfParticles(filename=os.path.join(str(tmp_path), "plain.sqlite"))
    parts.setSamplingRate(PIXEL_SIZE)
    for i in range(3):
        parts.append(emobj.Particle(location=(i + 1, stack)))
    np.testing.assert_array_equal(convert.particle_shifts(parts), np.zeros((3, 2)))
