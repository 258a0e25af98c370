"""Scipion protocol tests: the whole workflow, small, in a real Scipion project.

simulate -> train -> recover -> compare -> reconstruct, on the bundled 5j0n map at 32 px
with a tiny network, plus the refusals of bad input. Runs headless under pytest (the
root conftest.py sets up scratch Scipion folders).
"""
import os
import sys

import mrcfile
import numpy as np
import pytest
from pwem.protocols import ProtImportParticles, ProtImportVolumes
from pyworkflow.tests import BaseTest, setupTestProject

import orientlearn
from orientlearn import convert
from orientlearn.core import geometry
from orientlearn.protocols import (
    OrientLearnProtCompare,
    OrientLearnProtImportModel,
    OrientLearnProtReconstruct,
    OrientLearnProtRecover,
    OrientLearnProtSimulate,
    OrientLearnProtTrain,
)
from orientlearn.protocols.protocol_compare import ERROR_ATTR
from orientlearn.protocols.protocol_recover import CONFIDENCE_ATTR


class TestOrientLearnWorkflow(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.volume = cls.runImportVolume()

    @classmethod
    def runImportVolume(cls):
        prot = cls.newProtocol(ProtImportVolumes, filesPath=orientlearn.Plugin.getDemoMap(),
                               samplingRate=3.667)
        cls.launchProtocol(prot)
        return prot.outputVolume

    def _simulate(self, n, size=32, **kwargs):
        prot = self.newProtocol(OrientLearnProtSimulate, inputVolume=self.volume,
                                numberOfParticles=n, imageSize=size, **kwargs)
        self.launchProtocol(prot)
        return prot

    def test_simulate_outputs_ground_truth(self):
        prot = self._simulate(40, size=32, noiseMode=1, sigma2=4.0, maxShift=2.0,
                              doCtf=True, seed=3)
        parts = prot.outputParticles
        self.assertSetSize(parts, 40)
        self.assertEqual(parts.getXDim(), 32)
        # The 69x57x75 map is padded to an even cube (76) and downsampled to 32 px.
        self.assertAlmostEqual(parts.getSamplingRate(), 3.667 * 76 / 32, places=3)
        self.assertTrue(parts.hasCTF())
        ids, q, shifts = convert.particle_orientations(parts)
        self.assertEqual(q.shape, (40, 4))
        self.assertTrue(np.all(np.abs(shifts) <= 2.0 + 1e-6))
        self.assertGreater(np.abs(shifts).max(), 0.1)
        # Orientations stored on the particles are the ones the images were made with.
        truth = np.load(prot._getExtraPath("ground_truth.npz"))
        self.assertLess(geometry.distance(q, truth["quaternions"]).max(), 1e-6)
        _, images = convert.read_particle_images(parts)
        self.assertEqual(images.shape, (40, 32, 32))
        self.assertTrue(np.all(np.isfinite(images)))
        self.assertTrue(any("Projections:" in line for line in open(prot.getLogPaths()[0])))

    def assertKeptToOneThread(self, prot):
        """A run with Threads = 1 kept TensorFlow, numpy's BLAS and our pools to 1 thread:
        the settings each library reports at the start of every step (the protocol's
        "Resources:" log line, read from the libraries themselves)."""
        import json
        reports = [json.loads(line.split("Resources: threads ", 1)[1].rsplit(", CUDA", 1)[0])
                   for line in open(prot.getLogPaths()[0]) if "Resources: threads " in line]
        self.assertGreaterEqual(len(reports), 2)
        for report in reports:
            self.assertEqual(report["orientlearn"], 1)
            self.assertTrue(report["blas"], "numpy's BLAS not seen by threadpoolctl")
            self.assertEqual(set(report["blas"].values()), {1}, report["blas"])
            self.assertEqual(report["tensorflow_intra"], 1)
            self.assertEqual(report["tensorflow_inter"], 1)

    def _recoverInFakePluginEnvironment(self, particles, model):
        """Run 'recover' with ORIENTLEARN_HOME pointing at an environment whose
        ``env/bin/orientlearn`` is this Python's command line; checks the log shows it."""
        import tempfile
        home = tempfile.mkdtemp(prefix="orientlearn-env-")
        program = os.path.join(home, "env", "bin", "orientlearn")
        os.makedirs(os.path.dirname(program))
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(program, "w") as f:
            f.write(f"#!/bin/sh\nPYTHONPATH={repo} exec {sys.executable} "
                    "-m orientlearn.core.commands \"$@\"\n")
        os.chmod(program, 0o755)
        saved = os.environ.get("ORIENTLEARN_HOME")
        os.environ["ORIENTLEARN_HOME"] = home
        try:
            rec = self.newProtocol(OrientLearnProtRecover, inputParticles=particles,
                                   inputModel=model, nSteps=100, seed=1, numberOfThreads=1)
            self.launchProtocol(rec)
        finally:
            if saved is None:
                os.environ.pop("ORIENTLEARN_HOME", None)
            else:
                os.environ["ORIENTLEARN_HOME"] = saved
        with open(rec.getLogPaths()[0]) as f:
            self.assertIn(f"plugin's environment: {program}", f.read())
        return rec

    @pytest.mark.slow
    def test_workflow_end_to_end(self):
        # Off-centre particles: recover must hand their offsets on unchanged.
        sim = self._simulate(240, size=32, noiseMode=0, maxShift=1.5, seed=1)
        train = self.newProtocol(OrientLearnProtTrain, imageSize=32, epochs=3, batchSize=32,
                                 nFeatures=16, stepsPerEpoch=10, seed=1, numberOfThreads=1)
        train.inputParticles.append(sim.outputParticles)
        self.launchProtocol(train)
        self.assertKeptToOneThread(train)
        model = train.outputModel
        self.assertTrue(os.path.exists(model.getFileName()))
        self.assertEqual(model.getImageSize(), 32)
        self.assertEqual(len(model.getHistory()["loss"]), 3)

        # Loads back through the import protocol.
        imp = self.newProtocol(OrientLearnProtImportModel, modelFile=model.getFileName())
        self.launchProtocol(imp)
        self.assertEqual(imp.outputModel.getImageSize(), 32)

        rec = self.newProtocol(OrientLearnProtRecover, inputParticles=sim.outputParticles,
                               inputModel=model, nSteps=100, seed=1,
                               numberOfThreads=1)
        self.launchProtocol(rec)
        self.assertKeptToOneThread(rec)
        # The same recovery in the plugin's own environment (its 'orientlearn' program:
        # here this Python's command line) runs through runJob and gives the same result.
        rec_env = self._recoverInFakePluginEnvironment(sim.outputParticles, model)
        np.testing.assert_allclose(rec_env.getLossHistory(), rec.getLossHistory(), rtol=1e-4)
        _, q_env, _ = convert.particle_orientations(rec_env.outputParticles)
        _, q_here, _ = convert.particle_orientations(rec.outputParticles)
        dist = geometry.distance(q_env, q_here)
        self.assertLess(float(np.median(dist)), 1e-3)
        out = rec.outputParticles
        self.assertSetSize(out, 240)
        first = out.getFirstItem()
        self.assertTrue(first.hasTransform())
        self.assertTrue(hasattr(first, CONFIDENCE_ATTR))
        self.assertGreater(len(rec.getLossHistory()), 1)
        _, _, shifts_in = convert.particle_orientations(sim.outputParticles)
        _, _, shifts_out = convert.particle_orientations(out)
        self.assertGreater(np.abs(shifts_in).max(), 0.5)
        np.testing.assert_allclose(shifts_out, shifts_in, atol=1e-6)

        cmp_ = self.newProtocol(OrientLearnProtCompare, inputParticles=out,
                                referenceParticles=sim.outputParticles)
        self.launchProtocol(cmp_)
        res = cmp_.getResults()
        for key in ("o4_mean", "o4_median", "rot_mean", "rot_median"):
            self.assertTrue(0 <= res[key] <= np.pi)
        # O(4) has more freedom than rotation + handedness: its error cannot be larger.
        self.assertLessEqual(res["o4_mean"], res["rot_mean"] + 1e-6)
        self.assertTrue(hasattr(cmp_.outputParticles.getFirstItem(), ERROR_ATTR))
        # Recover keeps the input offsets (here the true ones): no frame translation, no
        # offset error, and the output's offsets are the reference's.
        self.assertLess(res["shift_median"], 1e-6)
        self.assertLess(np.abs(res["frame_translation"]).max(), 1e-6)
        _, _, shifts_cmp = convert.particle_orientations(cmp_.outputParticles)
        np.testing.assert_allclose(shifts_cmp, shifts_in, atol=1e-6)
        self.assertTrue(any(line.startswith("offsets: median error") for line in
                            cmp_.getTable()))

        recon = self.newProtocol(OrientLearnProtReconstruct,
                                 inputParticles=cmp_.outputParticles,
                                 referenceVolume=self.volume)
        self.launchProtocol(recon)
        vol = recon.outputVolume
        self.assertTrue(os.path.exists(vol.getFileName()))
        with mrcfile.open(vol.getFileName()) as m:
            self.assertEqual(m.data.shape, (32, 32, 32))
        self.assertEqual(recon.outputFSCs.getSize(), 2)
        self.assertIn("fsc_ref", recon.getResolutions())

        # The compare protocol's optional map FSC: the map against the true map.
        cmp_maps = self.newProtocol(OrientLearnProtCompare, inputParticles=out,
                                    referenceParticles=sim.outputParticles,
                                    inputVolume=vol, referenceVolume=self.volume)
        self.launchProtocol(cmp_maps)
        r = cmp_maps.getResults()
        nyquist = 2 * vol.getSamplingRate()
        self.assertGreaterEqual(r["map_fsc05"], nyquist - 1e-6)
        self.assertGreaterEqual(r["map_fsc0143"] + 1e-6, nyquist)
        self.assertLessEqual(r["map_fsc0143"], r["map_fsc05"] + 1e-6)
        self.assertTrue(any("map FSC" in line for line in cmp_maps._summary()))
        from orientlearn.viewers.figures import protocol_figures
        self.assertIn("map_fsc", protocol_figures(cmp_maps))
        # One map without the other is refused.
        half = self.newProtocol(OrientLearnProtCompare, inputParticles=out,
                                referenceParticles=sim.outputParticles, inputVolume=vol)
        self.assertTrue(any("both maps" in e for e in half._validate()))

    def test_reconstruct_true_orientations_beats_random(self):
        sim = self._simulate(300, size=32, noiseMode=0, seed=2)
        good = self.newProtocol(OrientLearnProtReconstruct, inputParticles=sim.outputParticles,
                                referenceVolume=self.volume)
        self.launchProtocol(good)
        res_good = good.getResolutions()["fsc_ref"][0]
        px = sim.outputParticles.getSamplingRate()
        # Near Nyquist (2 px) with true orientations.
        self.assertLess(res_good, 2.6 * px)

    def test_refusals(self):
        # Recover without a model, reconstruct without orientations.
        sim = self._simulate(20, size=32, noiseMode=0)
        rec = self.newProtocol(OrientLearnProtRecover, inputParticles=sim.outputParticles)
        errors = rec.validate()
        self.assertTrue(any("model" in e.lower() for e in errors), errors)
        # A model file that is missing, or not a Keras archive.
        from orientlearn.objects import DistanceModel
        bad = os.path.abspath(self.proj.getPath("broken.keras"))
        with open(bad, "w") as f:
            f.write("not a model")
        for path, word in ((bad, "corrupt"), (bad + ".gone", "missing")):
            rec.inputModel.set(DistanceModel(filename=path, imageSize=32,
                                             samplingRate=sim.outputParticles.getSamplingRate()))
            errors = rec.validate()
            self.assertTrue(any(word in e for e in errors), errors)

        stack = os.path.abspath(self.proj.getPath("plain.mrcs"))
        convert.write_stack(stack, np.random.default_rng(0).normal(size=(12, 32, 32)), 2.0)
        imp = self.newProtocol(ProtImportParticles,
                               importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                               filesPath=stack, samplingRate=2.0)
        self.launchProtocol(imp)
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=imp.outputParticles)
        errors = recon.validate()
        self.assertTrue(any("orientation" in e.lower() for e in errors), errors)

        train = self.newProtocol(OrientLearnProtTrain)
        train.inputParticles.append(imp.outputParticles)
        errors = train.validate()
        self.assertTrue(any("ALIGN_PROJ" in e for e in errors), errors)
