"""Particle sources (``core/source.py``): batches from MRC stacks, records, STAR files.

Core only: no Scipion import (the STAR reader is also checked against
scipion-em-relion's writer in ``test_convert.py``).
"""
import os

import mrcfile
import numpy as np
import pytest

from orientlearn.core import geometry
from orientlearn.core.source import ArraySource, MrcSource, StackWriter, read_star, write_star
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)   # scipion3 tests orientlearn.tests.test_source

SIZE, PIXEL = 12, 2.5


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, SIZE, SIZE)).astype(np.float32)


def _records(n, seed=1):
    rng = np.random.default_rng(seed)
    q = geometry.uniform_quaternions(n, seed=seed)
    t = rng.uniform(-3, 3, (n, 2))
    ctf = dict(defocus_u=rng.uniform(1e4, 2e4, n), defocus_v=rng.uniform(1e4, 2e4, n),
               astig_angle=rng.uniform(0, np.pi, n), voltage=200.0, cs=2.0,
               amplitude_contrast=0.07, phase_shift=0.0)
    return q, t, ctf


def _write(path, images, batch=4):
    with StackWriter(path, len(images), SIZE, PIXEL) as w:
        for b in range(0, len(images), batch):
            w.write(b, images[b:b + batch])
    return path


def test_writer_streams_a_stack_that_mrcfile_and_the_source_read_back(tmp_path):
    images = _images(11)
    path = _write(str(tmp_path / "s.mrcs"), images)
    assert not os.path.exists(path + ".partial")
    with mrcfile.open(path, permissive=True) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.voxel_size.x == pytest.approx(PIXEL)
        assert mrc.header.dmax == pytest.approx(images.max())
        assert mrc.header.dmean == pytest.approx(images.mean(), abs=1e-6)
    src = MrcSource(path)
    assert (len(src), src.image_size, src.pixel_size) == (11, SIZE, pytest.approx(PIXEL))
    np.testing.assert_array_equal(src.images(3, 7), images[3:7])
    np.testing.assert_array_equal(src.take([9, 0, 4]), images[[9, 0, 4]])
    got = np.concatenate([b for _, _, b in src.batches(5)])
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(src.shifts, 0.0)
    assert src.quaternions is None and src.ctf is None


def test_incomplete_or_failed_writes_leave_no_stack(tmp_path):
    path = str(tmp_path / "s.mrcs")
    with pytest.raises(RuntimeError, match="2 of 6 images were never written"):
        with StackWriter(path, 6, SIZE, PIXEL) as w:
            w.write(0, _images(4))
    assert not os.path.exists(path) and not os.path.exists(path + ".partial")
    with pytest.raises(ZeroDivisionError):
        with StackWriter(path, 6, SIZE, PIXEL) as w:
            w.write(0, _images(6))
            1 / 0
    assert not os.path.exists(path) and not os.path.exists(path + ".partial")
    with pytest.raises(ValueError, match="do not fit"):
        with StackWriter(path, 6, SIZE, PIXEL) as w:
            w.write(4, _images(3))


def test_locations_across_stacks_in_any_order(tmp_path):
    a, b = _images(5, 1), _images(4, 2)
    pa, pb = _write(str(tmp_path / "a.mrcs"), a), _write(str(tmp_path / "b.mrcs"), b)
    src = MrcSource([(pb, 3), (pa, 0), (pa, 4), (pb, 0)], pixel_size=1.0)
    np.testing.assert_array_equal(src.images(), np.stack([b[3], a[0], a[4], b[0]]))
    assert src.pixel_size == 1.0
    with pytest.raises(ValueError, match="has 5 images; index 6"):
        MrcSource([(pa, 5)])
    with pytest.raises(FileNotFoundError, match="missing.mrcs"):
        MrcSource(str(tmp_path / "missing.mrcs"))


def test_records_are_checked_and_kept():
    q, t, ctf = _records(6)
    src = ArraySource(_images(6), PIXEL, quaternions=2 * q, shifts=t, ctf=ctf)
    np.testing.assert_allclose(np.linalg.norm(src.quaternions, axis=1), 1.0)
    assert src.ctf["voltage"] == 200.0 and src.ctf["defocus_u"].shape == (6,)
    with pytest.raises(ValueError, match=r"quaternions must be \(6, 4\)"):
        ArraySource(_images(6), PIXEL, quaternions=q[:5])
    with pytest.raises(ValueError, match=r"shifts must be \(6, 2\)"):
        ArraySource(_images(6), PIXEL, shifts=t[:, :1])
    with pytest.raises(ValueError, match="lack"):
        ArraySource(_images(6), PIXEL, ctf={"defocus_u": 1e4})
    # New orientations keep the input shifts unless told otherwise.
    view = src.with_records(quaternions=q[::-1])
    np.testing.assert_array_equal(view.shifts, t)
    np.testing.assert_array_equal(view.images(), src.images())
    np.testing.assert_array_equal(view.ctf["defocus_u"], src.ctf["defocus_u"])


def test_star_round_trip_keeps_orientations_shifts_and_ctf(tmp_path):
    n = 7
    images = _images(n)
    q, t, ctf = _records(n)
    q[0] = [1, 0, 0, 0]                                     # a pole (tilt 0)
    os.makedirs(tmp_path / "parts")
    stack = _write(str(tmp_path / "parts" / "p.mrcs"), images)
    src = MrcSource(stack, quaternions=q, shifts=t, ctf=ctf)
    star = write_star(str(tmp_path / "parts.star"), src)
    text = open(star).read()
    assert "000001@parts/p.mrcs" in text                   # relative to the STAR file
    back = read_star(star)
    assert back.pixel_size == pytest.approx(PIXEL)
    np.testing.assert_array_equal(back.images(), images)
    np.testing.assert_allclose(geometry.distance(back.quaternions, q), 0.0, atol=1e-5)
    np.testing.assert_allclose(back.shifts, t, atol=1e-5)
    for k in ("defocus_u", "defocus_v", "astig_angle"):
        np.testing.assert_allclose(back.ctf[k], ctf[k], rtol=1e-5, atol=1e-6)
    for k in ("voltage", "cs", "amplitude_contrast"):
        assert back.ctf[k] == pytest.approx(ctf[k])
    # RELION's own meaning: origin = -shift in Angstrom, angles ZYZ (euler_to_matrix).
    from emtable import Table
    rows = list(Table(fileName=star, tableName="particles"))
    np.testing.assert_allclose(float(rows[2].rlnOriginXAngst), -t[2, 0] * PIXEL, atol=1e-4)
    R = geometry.euler_to_matrix(*np.radians([float(rows[3].rlnAngleRot),
                                              float(rows[3].rlnAngleTilt),
                                              float(rows[3].rlnAnglePsi)]))
    np.testing.assert_allclose(R, geometry.quaternion_to_matrix(q[3]), atol=1e-5)


def test_relion30_star_in_pixels(tmp_path):
    images = _images(3)
    _write(str(tmp_path / "p.mrcs"), images)
    star = tmp_path / "old.star"
    star.write_text("\ndata_\n\nloop_\n_rlnImageName #1\n_rlnOriginX #2\n_rlnOriginY #3\n"
                    "_rlnDetectorPixelSize #4\n_rlnMagnification #5\n"
                    "000002@p.mrcs 1.5 -2.0 5.0 10000\n000001@p.mrcs 0.0 0.0 5.0 10000\n")
    src = read_star(str(star))
    assert src.pixel_size == pytest.approx(5.0) and src.quaternions is None
    np.testing.assert_allclose(src.shifts, [[-1.5, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(src.images(), images[[1, 0]])
    bad = tmp_path / "bad.star"
    bad.write_text("data_\nloop_\n_rlnDefocusU #1\n10000\n")
    with pytest.raises(ValueError, match="rlnImageName"):
        read_star(str(bad))
