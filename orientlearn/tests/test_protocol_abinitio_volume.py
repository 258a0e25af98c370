"""Protocol 'ab initio' started from an initial volume (no distance model): the form's
checks, and (slow) a tiny run that trains its model on a low-passed 5j0n map resampled to
the particles' grid."""
import json
import os

import numpy as np
import pytest
from pwem.protocols import ProtImportVolumes
from pyworkflow.tests import BaseTest, setupTestProject

import orientlearn
from orientlearn import convert
from orientlearn.core import volumes
from orientlearn.protocols import OrientLearnProtAbInitio, OrientLearnProtSimulate
from orientlearn.protocols.protocol_abinitio import HISTORY_FILE, MODEL_FILE
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

VOXEL = 3.667


class TestOrientLearnAbInitioVolume(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        vol = cls.newProtocol(ProtImportVolumes, filesPath=orientlearn.Plugin.getDemoMap(),
                              samplingRate=VOXEL)
        cls.launchProtocol(vol)
        cls.true_volume = vol.outputVolume
        # The 25 A map in a 96 px box at the map's own voxel: another box and sampling
        # than the particles', so the protocol must resample it.
        big, voxel = volumes.read_volume(orientlearn.Plugin.getDemoMap())
        coarse = volumes.low_pass(volumes.crop_or_pad_volume(big, 96), voxel, 25.0)
        path = os.path.abspath(cls.proj.getTmpPath("coarse_25A.mrc"))
        convert.write_volume(path, coarse, voxel)
        imp = cls.newProtocol(ProtImportVolumes, filesPath=path, samplingRate=voxel)
        cls.launchProtocol(imp)
        cls.coarse = imp.outputVolume
        sim = cls.newProtocol(OrientLearnProtSimulate, inputVolume=cls.true_volume,
                              numberOfParticles=200, imageSize=32, noiseMode=0, doCtf=True,
                              maxShift=1.0, seed=4)
        cls.launchProtocol(sim)
        cls.parts = sim.outputParticles

    def test_initial_volume_lifts_the_model_refusal_and_is_checked(self):
        px = self.parts.getSamplingRate()
        prot = self.newProtocol(OrientLearnProtAbInitio, inputParticles=self.parts,
                                initialVolume=self.coarse, particleDiameter=26 * px)
        self.assertEqual(prot.validate(), [])
        # 5j0n's own file is 57 voxels of 3.667 A along y: 209 A, under a 250 A particle.
        prot = self.newProtocol(OrientLearnProtAbInitio, inputParticles=self.parts,
                                initialVolume=self.true_volume, particleDiameter=250.0)
        errors = prot.validate()
        self.assertTrue(any("Initial volume: its box" in e for e in errors), errors)
        self.assertFalse(any("generalist" in e for e in errors), errors)

    @pytest.mark.slow
    def test_ab_initio_from_an_initial_volume(self):
        px = self.parts.getSamplingRate()
        prot = self.newProtocol(OrientLearnProtAbInitio, inputParticles=self.parts,
                                initialVolume=self.coarse, particleDiameter=26 * px,
                                numberOfParticles=0, maxShift=2.0, refineIterations=2,
                                volumeParticles=300, volumeEpochs=2, volumeImageSize=24,
                                nSteps=300, seed=1, numberOfThreads=1,
                                resolutionTolerance=1.0)    # all 3 rounds run
        self.launchProtocol(prot)
        self.assertSetSize(prot.outputParticles, 200)
        _, q, _ = convert.particle_orientations(prot.outputParticles)
        self.assertTrue(np.all(np.isfinite(q)))
        self.assertTrue(os.path.exists(prot._getExtraPath(MODEL_FILE)))
        with open(prot._getExtraPath(MODEL_FILE).replace(".keras", ".json")) as f:
            meta = json.load(f)
        self.assertEqual((meta["kind"], meta["image_size"]), ("volume", 24))
        with open(prot._getExtraPath(HISTORY_FILE)) as f:
            hist = json.load(f)
        self.assertTrue(hist["model"].startswith("trained on"))
        self.assertEqual(hist["records"][0]["volume_particles"], 300)
        # Round 2 re-centres with the same model; round 3's model was retrained on round
        # 2's refined map.
        recovers = {r["iteration"]: r for r in hist["records"] if r["stage"] == "recover"}
        self.assertEqual(sorted(recovers), [1, 2, 3])
        self.assertNotIn("volume_training_seconds", recovers[2])
        self.assertGreater(recovers[3]["volume_training_seconds"], 0)
        self.assertIn("initial volume", " ".join(prot._methods()))
        self.assertIn("retrained", " ".join(prot._methods()))
