"""The 'common lines (ASPIRE)' peer protocol.

- refusals: no ASPIRE environment (the message names the command that makes one), an
  empty, too small or non-square set;
- the path from ASPIRE's rotations to oriented particles, without ASPIRE: a fake
  environment (a ``python`` wrapper that puts a stub ``aspire`` package on the path) whose
  CLSyncVoting returns known rotations, written in ASPIRE's convention from the ground
  truth of 'simulate';
- a real CLSyncVoting run on 40 tiny noiseless particles, compared with the ground truth
  by 'compare orientations'; skipped when no ASPIRE environment is present
  (``python -m orientlearn.core.peer_aspire create`` makes one).
"""
import os
import stat
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

import numpy as np
from pwem.objects import Particle, SetOfParticles
from pwem.protocols import ProtImportVolumes
from pyworkflow.tests import BaseTest, setupTestProject

import orientlearn
from orientlearn import convert
from orientlearn.core import geometry, peer_aspire
from orientlearn.protocols import (
    OrientLearnProtAspire,
    OrientLearnProtCompare,
    OrientLearnProtSimulate,
)
from orientlearn.protocols.protocol_aspire import WORK_DIR

VAR = peer_aspire.ASPIRE_PYTHON_VAR
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def real_aspire_python():
    """The ASPIRE interpreter the protocol would find without our fakes, or None."""
    with mock.patch.dict(os.environ):
        os.environ.pop(VAR, None)
        return orientlearn.Plugin.getAspirePython()[0]


def make_fake_aspire(folder, rotations):
    """A fake ASPIRE environment under ``folder``; returns its ``bin/python``.

    The stub package mimics what the runner uses: ``ArrayImageSource``, ``CLSyncVoting``
    whose ``estimate_rotations`` returns ``rotations`` (saved here), and ASPIRE's habit of
    writing ``logs/aspire-*.log`` in the current directory on import.
    """
    pkg = os.path.join(folder, "site", "aspire")
    os.makedirs(pkg, exist_ok=True)
    known = os.path.join(folder, "known_rotations.npy")
    np.save(known, rotations)
    files = {
        "__init__.py": """
            import os
            __version__ = "0.0-fake"
            os.makedirs("logs", exist_ok=True)
            open(os.path.join("logs", "aspire-fake.log"), "a").close()
            """,
        "source.py": """
            import numpy as np

            class ArrayImageSource:
                def __init__(self, images, pixel_size=None):
                    assert pixel_size and pixel_size > 0, "pixel_size is required"
                    self.images = np.asarray(images)
            """,
        "abinitio.py": f"""
            import numpy as np

            class CLSyncVoting:
                def __init__(self, src, n_theta=360):
                    assert n_theta % 2 == 0
                    self.src, self.n_theta, self.rotations = src, n_theta, None

                def estimate_rotations(self):
                    rot = np.load({known!r})
                    assert len(rot) == len(self.src.images), "one rotation per image"
                    self.rotations = rot
            """,
    }
    for name, text in files.items():
        with open(os.path.join(pkg, name), "w") as f:
            f.write(textwrap.dedent(text))
    python = os.path.join(folder, "bin", "python")
    os.makedirs(os.path.dirname(python), exist_ok=True)
    with open(python, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH="{os.path.join(folder, "site")}" '
                f'exec "{sys.executable}" "$@"\n')
    os.chmod(python, os.stat(python).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return python


class TestAspireConversion(unittest.TestCase):
    """No Scipion project: the conversion and the runner's refusals."""

    def test_round_trip_of_every_convention(self):
        q = geometry.uniform_quaternions(50, seed=1)
        for _, k, conj in peer_aspire.convention_candidates():
            back = peer_aspire.rotations_to_quaternions(
                peer_aspire.quaternions_to_rotations(q, (k, conj)), (k, conj))
            self.assertLess(geometry.distance(back, q).max(), 1e-5)

    def test_default_is_the_transpose(self):
        # (rot0, conjugate): our rotation matrix is the transpose of ASPIRE's.
        q = geometry.uniform_quaternions(5, seed=2)
        R = geometry.quaternion_to_matrix(q)
        np.testing.assert_allclose(peer_aspire.quaternions_to_rotations(q),
                                   np.swapaxes(R, 1, 2), atol=1e-12)

    def test_refuses_bad_images(self):
        with self.assertRaises(ValueError):
            peer_aspire.run_aspire(sys.executable, np.zeros((2, 8, 8)), 1.0)
        with self.assertRaises(ValueError):
            peer_aspire.run_aspire(sys.executable, np.zeros((5, 8, 6)), 1.0)

    def test_plugin_variable_name(self):
        self.assertEqual(orientlearn.ORIENTLEARN_ASPIRE_PYTHON, VAR)

    def test_this_environment_first(self):
        with mock.patch.object(peer_aspire, "aspire_in_this_env", lambda: True):
            self.assertEqual(peer_aspire.find_aspire_python("")[0], sys.executable)

    def test_runner_failure_is_reported(self):
        if peer_aspire.aspire_in_this_env():
            self.skipTest("aspire is installed here")
        with tempfile.TemporaryDirectory() as work:
            with self.assertRaises(RuntimeError) as ctx:
                peer_aspire.run_aspire(sys.executable, np.zeros((4, 8, 8)), 1.0, workdir=work)
        self.assertIn("No module named 'aspire'", str(ctx.exception))

    def test_missing_environment_messages(self):
        msg = peer_aspire.find_aspire_python("/no/such/venv/bin/python")[1]
        self.assertIn("/no/such/venv/bin/python does not exist", msg)
        self.assertIn("-m orientlearn.core.peer_aspire create --venv /no/such/venv", msg)


class TestAspireProtocol(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        vol = cls.newProtocol(ProtImportVolumes, filesPath=orientlearn.Plugin.getDemoMap(),
                              samplingRate=3.667)
        cls.launchProtocol(vol)
        cls.sim = cls.newProtocol(OrientLearnProtSimulate, inputVolume=vol.outputVolume,
                                  numberOfParticles=40, imageSize=32, noiseMode=0, seed=5)
        cls.launchProtocol(cls.sim)
        cls.truth = convert.particle_orientations(cls.sim.outputParticles)

    # -------------------------------------------------------------- helpers
    def _tmp(self, name):
        path = os.path.abspath(self.proj.getTmpPath(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def _manual_set(self, name, shapes):
        """A SetOfParticles (not registered in the project) over new stacks."""
        parts = SetOfParticles(filename=self._tmp(name + ".sqlite"))
        parts.setSamplingRate(2.0)
        for k, shape in enumerate(shapes):
            stack = self._tmp(f"{name}_{k}.mrcs")
            convert.write_stack(stack, np.zeros(shape, np.float32), 2.0)
            for i in range(shape[0]):
                p = Particle(location=(i + 1, stack))
                p.setSamplingRate(2.0)
                parts.append(p)
        parts.write()
        return parts

    def _errors(self, particles, **kwargs):
        prot = self.newProtocol(OrientLearnProtAspire, **kwargs)
        prot.inputParticles.set(particles)
        return prot.validate()

    # -------------------------------------------------------------- tests
    def test_refuses_missing_environment(self):
        parts = self.sim.outputParticles
        # Variable set to a python that does not exist: says so and how to create it.
        missing = self._tmp("nowhere/venv/bin/python")
        with mock.patch.dict(os.environ, {VAR: missing}):
            errors = self._errors(parts)
        text = "\n".join(errors)
        self.assertIn(VAR, text)
        self.assertIn(f"{missing} does not exist", text)
        self.assertIn(f"{sys.executable} -m orientlearn.core.peer_aspire create --venv "
                      f"{os.path.dirname(os.path.dirname(missing))}", text)
        # Nothing anywhere: the commands for a separate venv and for this env.
        with mock.patch.dict(os.environ), \
                mock.patch.object(peer_aspire, "DEFAULT_VENV", self._tmp("no-default-venv")), \
                mock.patch.object(peer_aspire, "aspire_in_this_env", lambda: False):
            os.environ.pop(VAR, None)
            errors = self._errors(parts)
        text = "\n".join(errors)
        self.assertIn("ASPIRE is not installed", text)
        self.assertIn(f"{sys.executable} -m orientlearn.core.peer_aspire create", text)
        self.assertIn(f"{sys.executable} -m pip install", text)
        # A python without aspire.
        with mock.patch.dict(os.environ, {VAR: sys.executable}), \
                mock.patch.object(peer_aspire, "aspire_in_this_env", lambda: False):
            if not peer_aspire.has_aspire(sys.executable)[0]:
                errors = self._errors(parts)
                self.assertTrue(any("has no 'aspire' package" in e for e in errors), errors)

    def test_refuses_bad_particles(self):
        fake = make_fake_aspire(self._tmp("fake-env-validate"), np.zeros((1, 3, 3)))
        with mock.patch.dict(os.environ, {VAR: fake}):
            empty = SetOfParticles(filename=self._tmp("empty.sqlite"))
            empty.setSamplingRate(2.0)
            empty.write()
            errors = self._errors(empty)
            self.assertTrue(any("0 particle(s)" in e for e in errors), errors)
            errors = self._errors(self._manual_set("two", [(2, 16, 16)]))
            self.assertTrue(any("at least 3" in e for e in errors), errors)
            errors = self._errors(self._manual_set("rect", [(4, 16, 12)]))
            self.assertTrue(any("square" in e for e in errors), errors)
            errors = self._errors(self.sim.outputParticles, nTheta=359, downsampleBox=64)
            self.assertTrue(any("even" in e for e in errors), errors)
            self.assertTrue(any("larger than the particles' box" in e for e in errors), errors)
            # The fake environment is a valid one: good input passes.
            self.assertEqual(self._errors(self.sim.outputParticles), [])

    def test_fake_aspire_rotations_to_particles(self):
        ids, q_true, _ = self.truth
        # Known answer, in ASPIRE's convention: the protocol must give back the truth.
        rotations = peer_aspire.quaternions_to_rotations(q_true)
        fake = make_fake_aspire(self._tmp("fake-env"), rotations)
        repo_logs_before = os.path.exists(os.path.join(REPO, "logs"))
        cwd_logs_before = os.path.exists("logs")
        with mock.patch.dict(os.environ, {VAR: fake}):
            prot = self.newProtocol(OrientLearnProtAspire, nTheta=120, downsampleBox=24,
                                    seed=3)
            prot.inputParticles.set(self.sim.outputParticles)
            self.launchProtocol(prot)
        out = prot.outputParticles
        self.assertSetSize(out, 40)
        self.assertTrue(convert.has_projection_alignment(out))
        ids_out, q_out, shifts = convert.particle_orientations(out)
        np.testing.assert_array_equal(ids_out, ids)
        self.assertLess(geometry.distance(q_out, q_true).max(), 1e-5)
        np.testing.assert_allclose(shifts, 0.0)
        # Same images, CTF, sampling as the input.
        self.assertEqual(out.getFirstItem().getLocation(),
                         self.sim.outputParticles.getFirstItem().getLocation())
        info = prot.getInfo()
        self.assertEqual((info["aspire_version"], info["n_images"], info["image_size"],
                          info["n_theta"], info["seed"], info["box"]),
                         ("0.0-fake", 40, 24, 120, 3, 24))
        self.assertAlmostEqual(info["pixel_size"],
                               self.sim.outputParticles.getSamplingRate() * 32 / 24, places=5)
        # ASPIRE's logs/ went to the work folder, not the project, the repo or the cwd.
        self.assertTrue(os.path.exists(prot._getExtraPath(WORK_DIR, "logs", "aspire-fake.log")))
        self.assertFalse(os.path.exists(os.path.join(self.proj.getPath(), "logs")))
        self.assertFalse(os.path.exists(prot._getLogsPath("aspire-fake.log")))
        self.assertEqual(os.path.exists(os.path.join(REPO, "logs")), repo_logs_before)
        self.assertEqual(os.path.exists("logs"), cwd_logs_before)
        # The copy of the images for ASPIRE is not kept.
        self.assertFalse(os.path.exists(prot._getExtraPath(WORK_DIR, peer_aspire.IMAGES_FILE)))
        log = open(prot.getLogPaths()[0]).read()
        self.assertIn(f"ASPIRE runs with {fake}", log)
        self.assertIn("Stage 1/3: rotations from the synchronization matrix", log)
        self.assertIn("Fourier-downsampling 40 images 32 -> 24 px", log)
        self.assertTrue(prot.summary() and "ASPIRE" in prot.summary()[0])
        self.assertTrue(any("ASPIRE" in m for m in prot.methods()))
        self.assertIn("ASPIRE", prot._citations())

    def test_real_aspire_noiseless(self):
        python = real_aspire_python()
        if python is None:
            self.skipTest("no ASPIRE environment (python -m orientlearn.core.peer_aspire create)")
        with mock.patch.dict(os.environ):
            os.environ.pop(VAR, None)
            prot = self.newProtocol(OrientLearnProtAspire, nTheta=360)
            prot.inputParticles.set(self.sim.outputParticles)
            self.launchProtocol(prot)
        self.assertSetSize(prot.outputParticles, 40)
        self.assertTrue(prot.getInfo()["aspire_version"].startswith("0."))
        log = open(prot.getLogPaths()[0]).read()
        self.assertIn("Stage 3/3", log)
        cmp_ = self.newProtocol(OrientLearnProtCompare, inputParticles=prot.outputParticles,
                                referenceParticles=self.sim.outputParticles)
        self.launchProtocol(cmp_)
        res = cmp_.getResults()
        # Noiseless 32 px projections: ASPIRE is near exact (0.1 deg measured), and the
        # conversion holds up to rotation + handedness, not only up to O(4).
        self.assertLess(res["rot_median"], np.radians(2.0), res)
        self.assertLess(res["o4_median"], np.radians(2.0), res)
