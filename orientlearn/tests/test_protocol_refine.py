"""Scipion protocol 'refine' on a tiny simulated set: outputs, and the offsets found."""
import os

import mrcfile
import numpy as np
from pwem.protocols import ProtImportVolumes
from pyworkflow.tests import BaseTest, setupTestProject

import orientlearn
from orientlearn import convert
from orientlearn.core import geometry
from orientlearn.protocols import OrientLearnProtRefine, OrientLearnProtSimulate
from orientlearn.protocols.protocol_refine import HALF_ATTR, SCORE_ATTR


class TestOrientLearnRefine(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        vol = cls.newProtocol(ProtImportVolumes, filesPath=orientlearn.Plugin.getDemoMap(),
                              samplingRate=3.667)
        cls.launchProtocol(vol)
        cls.volume = vol.outputVolume
        cls.sim = cls.newProtocol(OrientLearnProtSimulate, inputVolume=cls.volume,
                                  numberOfParticles=160, imageSize=32, noiseMode=0,
                                  maxShift=1.5, seed=4)
        cls.launchProtocol(cls.sim)

    def test_refine_finds_the_offsets(self):
        parts = self.sim.outputParticles
        prot = self.newProtocol(OrientLearnProtRefine, inputParticles=parts, startShifts=2,
                                maxShift=3.0, maxIterations=3, minIterations=2, seed=1,
                                numberOfThreads=2)
        self.launchProtocol(prot)
        out = prot.outputParticles
        self.assertSetSize(out, 160)
        _, q_true, t_true = convert.particle_orientations(parts)
        _, q_out, t_out = convert.particle_orientations(out)
        # Started from zero offsets ('zero'), the search finds the simulated ones.
        self.assertGreater(np.median(np.linalg.norm(t_true, axis=1)), 0.5)
        self.assertLess(np.median(np.linalg.norm(t_out - t_true, axis=1)), 0.3)
        self.assertLess(np.degrees(np.median(geometry.distance(q_out, q_true))), 1.5)
        first = out.getFirstItem()
        self.assertTrue(hasattr(first, SCORE_ATTR))
        self.assertIn(int(getattr(first, HALF_ATTR)), (1, 2))
        # The map, its half maps and the gold-standard FSC.
        vol = prot.outputVolume
        for fn in [vol.getFileName()] + list(vol.getHalfMaps().split(",")):
            self.assertTrue(os.path.exists(fn), fn)
            with mrcfile.open(fn) as m:
                self.assertEqual(m.data.shape, (32, 32, 32))
        self.assertEqual(prot.outputFSCs.getSize(), 1)
        r = prot.getResults()
        self.assertLess(r["resolution"], 3.0 * parts.getSamplingRate())
        self.assertTrue(any("gold standard" in line for line in prot._summary()))
        self.assertGreaterEqual(len(prot.getHistory()), 2)
        self.assertTrue(prot._methods())

    def test_refusals(self):
        parts = self.sim.outputParticles
        box_A = parts.getXDim() * parts.getSamplingRate()
        prot = self.newProtocol(OrientLearnProtRefine, inputParticles=parts,
                                maskDiameter=box_A * 1.5, maxShift=20.0,
                                minIterations=5, maxIterations=2, symmetryGroup="C0")
        errors = prot.validate()
        for word in ("Mask diameter", "Offset search range", "Minimum iterations"):
            self.assertTrue(any(word in e for e in errors), (word, errors))
        self.assertTrue(any("C0" in e or "symmetry" in e.lower() for e in errors), errors)
