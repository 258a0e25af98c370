"""Protocol simulate from atomic models: an imported AtomStruct, and a folder of PDB files."""
import os
import tempfile

import numpy as np
from pwem.protocols import ProtImportPdb
from pyworkflow.tests import BaseTest, setupTestProject

from orientlearn import convert
from orientlearn.constants import SIM_FROM_ATOMSTRUCT, SIM_FROM_FILES
from orientlearn.core import atoms, volumes
from orientlearn.protocols import OrientLearnProtSimulate
from orientlearn.tests.atomic_models import tiny_protein, write_pdb


class TestSimulateFromAtoms(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.folder = tempfile.mkdtemp(prefix="orientlearn-atoms-")
        cls.pdb_a = write_pdb(os.path.join(cls.folder, "a.pdb"), tiny_protein(seed=0, n=40),
                              ["C"] * 40)
        cls.pdb_b = write_pdb(os.path.join(cls.folder, "b.pdb.gz"),
                              tiny_protein(seed=1, n=30) * np.array([0.6, 1.0, 1.0]),
                              ["N"] * 30)

    def test_atomstruct_to_particles_and_map(self):
        imp = self.newProtocol(ProtImportPdb, inputPdbData=ProtImportPdb.IMPORT_FROM_FILES,
                               pdbFile=self.pdb_a, skipChimera=True)
        self.launchProtocol(imp)
        prot = self.newProtocol(OrientLearnProtSimulate, inputSource=SIM_FROM_ATOMSTRUCT,
                                inputStructure=imp.outputPdb, atomPixelSize=1.5,
                                numberOfParticles=12, noiseMode=0, seed=4)
        self.launchProtocol(prot)
        parts = prot.outputParticles
        self.assertSetSize(parts, 12)
        self.assertAlmostEqual(parts.getSamplingRate(), 1.5, places=6)
        # the map is the one core/atoms.py computes, centred, in the smallest even box
        expected = atoms.atoms_to_map(self.pdb_a, 1.5).volume
        vol, voxel = volumes.read_volume(convert.clean_path(prot.outputVolume.getFileName()))
        self.assertAlmostEqual(voxel, 1.5, places=4)
        self.assertEqual(parts.getXDim(), expected.shape[0])
        self.assertLess(np.abs(vol - expected).max(), 1e-5 * np.abs(expected).max())
        _, images = convert.read_particle_images(parts)
        # noiseless projections of a map made of atoms: unit variance, centred mass
        self.assertAlmostEqual(float(np.mean(np.var(images, axis=(1, 2)))), 1.0, places=3)
        self.assertIn("Wojdyr2022", prot._citations())

    def test_folder_of_models(self):
        prot = self.newProtocol(OrientLearnProtSimulate, inputSource=SIM_FROM_FILES,
                                atomFiles=self.folder, atomPixelSize=2.0, atomBox=40,
                                imageSize=32, numberOfParticles=10, noiseMode=1,
                                sigma2=4.0, doCtf=True, maxShift=2.0, seed=1)
        self.launchProtocol(prot)
        parts = prot.outputParticles
        self.assertSetSize(parts, 20)  # 10 per model
        self.assertEqual(parts.getXDim(), 32)
        self.assertAlmostEqual(parts.getSamplingRate(), 2.0 * 40 / 32, places=6)
        self.assertTrue(parts.hasCTF())
        truth = np.load(prot._getExtraPath("ground_truth.npz"))
        np.testing.assert_array_equal(truth["map_index"], np.repeat([0, 1], 10))
        self.assertEqual(len(truth["map_files"]), 2)
        self.assertFalse(hasattr(prot, "outputVolume"))  # several maps: no single volume
        # the two proteins' clean projections differ (each block comes from its own map)
        clean = convert.read_stack(prot._getExtraPath("particles_clean.mrcs"))
        self.assertGreater(np.abs(clean[:10].mean(0) - clean[10:].mean(0)).max(), 0.1)

    def test_refusals(self):
        prot = self.newProtocol(OrientLearnProtSimulate, inputSource=SIM_FROM_FILES,
                                atomFiles=os.path.join(self.folder, "missing.pdb"))
        errors = prot.validate()
        self.assertTrue(any("not found" in e for e in errors), errors)
        prot = self.newProtocol(OrientLearnProtSimulate, inputSource=SIM_FROM_FILES,
                                atomFiles=self.pdb_a, atomPixelSize=2.0, atomResolution=3.0)
        errors = prot.validate()
        self.assertTrue(any("finer than Nyquist" in e for e in errors), errors)
