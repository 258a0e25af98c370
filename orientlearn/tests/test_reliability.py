"""Reliability: bad inputs are refused before the run, a changed parameter is never
silently ignored on *continue*, concurrent or killed runs never end with wrong outputs.

Issue 16's five problems, each with a test that failed before its fix:
1. continue after a changed parameter (steps take their parameters as arguments; the
   training checkpoint must match them, else "use restart");
2. NaN or empty FSC curves and blank / NaN maps are errors, not Nyquist;
3. constant (zero-variance), NaN and huge-valued images are refused with their ids;
4. checks in ``_validate``: symmetry orders, pixel sizes, model-import overrides, deleted
   stacks, oversampling; reference maps resampled with bounded memory;
5. a run lock: a second simultaneous run refuses; kill -9 then continue resumes.
"""
import json
import os
import signal
import time
import tracemalloc

import mrcfile
import numpy as np
import pytest
from pwem.protocols import ProtImportParticles, ProtImportVolumes
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import BaseTest, setupTestProject

import orientlearn
from orientlearn import convert
from orientlearn.core import checks, geometry
from orientlearn.protocols import (
    OrientLearnProtCompare,
    OrientLearnProtImportModel,
    OrientLearnProtReconstruct,
    OrientLearnProtRecover,
    OrientLearnProtSimulate,
    OrientLearnProtTrain,
)
from orientlearn.protocols.protocol_base import OrientLearnProtBase
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


# ------------------------------------------------------------------ core-level checks

def test_image_defects_name_the_ids():
    images = np.random.default_rng(0).normal(size=(8, 6, 6)).astype(np.float32)
    images[2] = 0.0                    # blank
    images[5] = 7.5                    # constant
    images[3, 1, 1] = np.nan
    images[6, 0, 0] = 3e38             # near float32's max
    defects = checks.image_defects(images)
    ids = np.arange(101, 109)
    assert list(ids[defects["constant"]]) == [103, 106]
    assert list(ids[defects["non_finite"]]) == [104]
    assert list(ids[defects["huge"]]) == [107]
    text = " ".join(checks.describe_image_defects(ids, defects, "Particles"))
    assert "2 of 8 image(s) are constant" in text and "ids 103, 106" in text
    assert "NaN" in text and "ids 104" in text and "ids 107" in text
    with pytest.raises(ValueError, match=r"ids 103, 106"):
        OrientLearnProtBase._checkImages(ids, images, "Particles")


def test_blank_or_nan_map_is_refused():
    with pytest.raises(ValueError, match="all zero"):
        checks.check_map(np.zeros((8, 8, 8)), "The map")
    vol = np.ones((8, 8, 8))
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        checks.check_map(vol, "The map")
    checks.check_map(np.random.default_rng(0).normal(size=(8, 8, 8)))


@pytest.mark.parametrize("name, order", [("C61", 61), ("D31", 62), ("D39", 78),
                                         ("C2500", 2500), ("C100000", 100000)])
def test_symmetry_beyond_supported_is_a_clear_value_error(name, order):
    # Was: RuntimeError from the group closure (C61+, D31+), or a silent C1 (C2223+).
    with pytest.raises(ValueError, match=f"{name} has {order} elements"):
        geometry.symmetry_group(name)
    assert OrientLearnProtBase._validateSymmetry(name)[0].startswith("Symmetry group: ")


@pytest.mark.parametrize("name, order", [("C60", 60), ("D30", 60), ("C7", 7), ("I", 60)])
def test_supported_symmetry_orders(name, order):
    group = geometry.symmetry_group(name)
    assert len(group) == order
    # All distinct rotations (no silent collapse to fewer elements).
    gram = np.abs(group @ group.T)
    assert np.sum(gram > 1 - 1e-9) == order


@pytest.mark.parametrize("value, ok", [(0.0, False), (None, False), (0.01, False),
                                       (0.1, True), (3.7, True), (50.0, True), (80.0, False)])
def test_pixel_size_range(value, ok):
    assert (checks.check_pixel_size(value) is None) == ok


def test_reference_map_resampled_with_bounded_memory():
    """Resampling to a tiny pixel never builds the whole fine-grid map (was 39 GiB for
    a tiny-pixel particle set); the values equal whole-map resampling then cropping."""
    from orientlearn.core import volumes
    vol, voxel = volumes.read_volume(orientlearn.Plugin.getDemoMap())
    # Same numbers as resampling the whole map and cropping, where that is affordable.
    for size, pixel in ((48, 1.5), (32, 8.0), (40, voxel)):
        whole = int(round(vol.shape[0] * voxel / pixel))
        expected = volumes.crop_or_pad_volume(volumes.downsample_volume(vol, whole)
                                              if whole != vol.shape[0] else vol, size)
        got = volumes.resample_to_grid(vol, voxel, size, pixel)
        assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()
    # 0.02 A/px: the whole map would be 13,944^3 voxels (10 TB); here ~17 MB at most.
    tracemalloc.start()
    try:
        out = volumes.resample_to_grid(vol, voxel, 64, 0.02)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (64, 64, 64) and np.all(np.isfinite(out))
    assert peak < 64e6, peak


# ------------------------------------------------------------------ Scipion protocols

class TestReliability(BaseTest):
    """Refusals and re-runs in a real Scipion project (32 px simulations of 5j0n)."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        prot = cls.newProtocol(ProtImportVolumes, filesPath=orientlearn.Plugin.getDemoMap(),
                               samplingRate=3.667)
        cls.launchProtocol(prot)
        cls.volume = prot.outputVolume

    def _simulate(self, n, size=32, **kwargs):
        prot = self.newProtocol(OrientLearnProtSimulate, inputVolume=self.volume,
                                numberOfParticles=n, imageSize=size, **kwargs)
        self.launchProtocol(prot)
        return prot

    def _continue(self, prot, wait=True):
        """Launch ``prot`` again in *continue* mode (as the GUI's Continue button)."""
        prot.runMode.set(MODE_RESUME)
        self.proj.launchProtocol(prot, wait=wait)
        return prot

    def _importStack(self, images, pixel_size, name):
        stack = os.path.abspath(self.proj.getPath(name))
        convert.write_stack(stack, images, pixel_size)
        imp = self.newProtocol(ProtImportParticles,
                               importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                               filesPath=stack, samplingRate=pixel_size)
        self.launchProtocol(imp)
        return imp, stack

    # ---- 1. continue after a changed parameter ------------------------------------
    def test_continue_with_changed_parameter_reruns_the_steps(self):
        sim = self._simulate(20, noiseMode=0, seed=4)
        self.assertSetSize(sim.outputParticles, 20)
        sim.numberOfParticles.set(30)
        sim.seed.set(5)
        self._continue(sim)
        self.assertTrue(sim.isFinished(), sim.getErrorMessage())
        # Was: every step skipped ("nothing to be done"), still 20 particles.
        self.assertSetSize(sim.outputParticles, 30)

    @pytest.mark.slow
    def test_continue_train_with_changed_image_size_refuses_and_epochs_resume(self):
        sim = self._simulate(80, noiseMode=0, seed=6)
        train = self.newProtocol(OrientLearnProtTrain, imageSize=32, epochs=2, batchSize=16,
                                 nFeatures=8, stepsPerEpoch=3, patience=50, seed=1)
        train.inputParticles.append(sim.outputParticles)
        self.launchProtocol(train)
        history = train.outputModel.getHistory()
        self.assertEqual(len(history["loss"]), 2)

        # Image size 32 -> 24: refused before the run with a message saying restart...
        train.imageSize.set(24)
        train.runMode.set(MODE_RESUME)
        errors = train.validate()
        self.assertTrue(any("imageSize 32 -> 24" in e and "restart" in e for e in errors),
                        errors)
        # ... and by the step itself if launched anyway (a script, no validation): the
        # model is not relabelled 24 px while trained on 32 px data.
        self._continue(train)
        self.assertTrue(train.isFailed())
        self.assertIn("restart", train.getErrorMessage())
        self.assertEqual(train.outputModel.getImageSize(), 32)

        # Epochs 2 -> 3 is a legitimate continue: it resumes the checkpoint.
        train.imageSize.set(32)
        train.epochs.set(3)
        self.assertEqual(train.validate(), [])
        self._continue(train)
        self.assertTrue(train.isFinished(), train.getErrorMessage())
        resumed = train.outputModel.getHistory()
        self.assertEqual(len(resumed["loss"]), 3)
        self.assertEqual(resumed["loss"][:2], history["loss"])
        log = open(train.getLogPaths()[0]).read()
        self.assertIn("Resuming from the checkpoint of epoch 2", log)

    def test_finished_without_outputs_is_a_failure(self):
        sim = self._simulate(12, noiseMode=0, seed=7)
        sim.deleteOutput(sim.outputParticles)          # outputs lost, steps done
        self._continue(sim)
        # Was: "All steps seem to be FINISHED" -> finished with no outputParticles.
        self.assertTrue(sim.isFailed())
        self.assertIn("without its output", sim.getErrorMessage())

    # ---- 2. no resolution from a blank map -------------------------------------------
    def test_reconstruct_with_a_blank_reference_fails_without_outputs(self):
        sim = self._simulate(20, noiseMode=0, seed=13)
        path = os.path.abspath(self.proj.getPath("blank.mrc"))
        convert.write_volume(path, np.zeros((32, 32, 32), np.float32), 3.667)
        imp = self.newProtocol(ProtImportVolumes, filesPath=path, samplingRate=3.667)
        self.launchProtocol(imp)
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=sim.outputParticles,
                                 referenceVolume=imp.outputVolume)
        self.assertEqual(recon.validate(), [])
        self.proj.launchProtocol(recon, wait=True)
        # Was: finished, "FSC vs reference" at Nyquist.
        self.assertTrue(recon.isFailed())
        self.assertIn("all zero", recon.getErrorMessage())
        self.assertFalse(recon.hasAttribute("outputVolume"))

    # ---- 3. constant, NaN, huge images -----------------------------------------------
    def test_constant_nan_and_huge_images_are_refused_with_ids(self):
        sim = self._simulate(30, noiseMode=0, seed=8)
        stack = convert.clean_path(sim.outputParticles.getFirstItem().getFileName())
        with mrcfile.open(stack, mode="r+") as mrc:
            mrc.data[2] = 0.0          # particle id 3
            mrc.data[6] = 1.25         # id 7: constant, not zero
            mrc.data[9, 4, 4] = np.nan  # id 10
            mrc.data[11, 0, 0] = 3e38   # id 12
        parts = sim.outputParticles
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=parts)
        text = " ".join(recon.validate())
        self.assertIn("2 of 30 image(s) are constant", text)
        self.assertIn("ids 3, 7", text)
        self.assertIn("NaN", text)
        self.assertIn("ids 10", text)
        self.assertIn("ids 12", text)
        rec = self.newProtocol(OrientLearnProtRecover, inputParticles=parts)
        self.assertTrue(any("ids 3, 7" in e for e in rec.validate()))
        train = self.newProtocol(OrientLearnProtTrain, batchSize=8)
        train.inputParticles.append(parts)
        self.assertTrue(any("ids 3, 7" in e for e in train.validate()))

    def test_all_zero_stack_is_refused(self):
        sim = self._simulate(12, noiseMode=0, seed=9)
        stack = convert.clean_path(sim.outputParticles.getFirstItem().getFileName())
        with mrcfile.open(stack, mode="r+") as mrc:
            mrc.data[:] = 0.0
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=sim.outputParticles)
        errors = recon.validate()
        self.assertTrue(any("12 of 12 image(s) are constant" in e for e in errors), errors)

    # ---- 4. checks in _validate ------------------------------------------------------
    def test_validate_symmetry_pixel_size_files_oversampling(self):
        sim = self._simulate(12, noiseMode=0, seed=10)
        for cls_ in (OrientLearnProtReconstruct, OrientLearnProtCompare):
            prot = self.newProtocol(cls_, inputParticles=sim.outputParticles,
                                    referenceParticles=sim.outputParticles,
                                    symmetryGroup="D39") if cls_ is OrientLearnProtCompare \
                else self.newProtocol(cls_, inputParticles=sim.outputParticles,
                                      symmetryGroup="D39")
            errors = prot.validate()          # never raises
            self.assertTrue(any("D39 has 78 elements" in e for e in errors), errors)
        train = self.newProtocol(OrientLearnProtTrain, symmetryGroup="C61")
        train.inputParticles.append(sim.outputParticles)
        self.assertTrue(any("C61 has 61 elements" in e for e in train.validate()))

        bad_sim = self.newProtocol(OrientLearnProtSimulate, inputVolume=self.volume,
                                   numberOfParticles=5, oversampling=0)
        self.assertTrue(any("oversampling" in e for e in bad_sim.validate()))

        rng = np.random.default_rng(0)
        imp, _ = self._importStack(rng.normal(size=(12, 32, 32)), 0.01, "tiny_pixels.mrcs")
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=imp.outputParticles)
        self.assertTrue(any("0.01 A/px is outside the physical range" in e
                            for e in recon.validate()))

        imp2, stack = self._importStack(rng.normal(size=(12, 32, 32)), 2.0, "gone.mrcs")
        copied = convert.clean_path(imp2.outputParticles.getFirstItem().getFileName())
        os.remove(copied)
        if os.path.exists(stack):
            os.remove(stack)
        recon = self.newProtocol(OrientLearnProtReconstruct, inputParticles=imp2.outputParticles)
        self.assertTrue(any("no longer exist" in e for e in recon.validate()),
                        recon.validate())

    def test_import_model_pixel_size_override_must_match_metadata(self):
        # _validate reads only the metadata beside the model file.
        path = os.path.abspath(self.proj.getPath("tiny.keras"))
        with open(path, "wb") as f:
            f.write(b"PK")
        with open(path[:-len(".keras")] + ".json", "w") as f:
            json.dump(dict(image_size=32, pixel_size=8.7, symmetry="C1"), f)
        imp = self.newProtocol(OrientLearnProtImportModel, modelFile=path, samplingRate=34.8)
        errors = imp.validate()
        self.assertTrue(any("disagrees with the model's metadata" in e and "4.00x" in e
                            for e in errors), errors)
        imp.samplingRate.set(0.0)
        self.assertEqual(imp.validate(), [])
        imp.samplingRate.set(8.75)
        self.assertEqual(imp.validate(), [])

    # ---- 5. a second simultaneous run; kill -9 then continue --------------------------
    @pytest.mark.slow
    def test_second_run_refuses_and_kill9_then_continue_resumes(self):
        sim = self._simulate(64, noiseMode=0, seed=11)
        train = self.newProtocol(OrientLearnProtTrain, imageSize=32, epochs=500, batchSize=16,
                                 nFeatures=8, stepsPerEpoch=2, patience=1000, seed=2)
        train.inputParticles.append(sim.outputParticles)
        self.proj.launchProtocol(train, wait=False)
        state = train._getExtraPath("checkpoints", "state.json")
        lock = train._runLockPath()
        deadline = time.time() + 300
        while not (os.path.exists(state) and os.path.exists(lock)):
            self.assertLess(time.time(), deadline, "training did not reach its first epoch")
            time.sleep(0.5)
        with open(lock) as f:
            pid = json.load(f)["pid"]

        # A second run of the same protocol while the first one trains: refused, clearly,
        # by _validate (the GUI) and by the run itself (a script launching it anyway).
        self.assertTrue(any("Another run of this protocol is still working" in e
                            and str(pid) in e for e in train.validate()))
        self._continue(train)
        self.assertTrue(train.isFailed())
        self.assertIn("Another run of this protocol is still working", train.getErrorMessage())
        self.assertFalse(train.hasAttribute("outputModel"))

        # kill -9 of the training process; its lock is released with it.
        os.kill(pid, signal.SIGKILL)
        while train._runLockHolder() is not None:
            self.assertLess(time.time(), deadline, "the killed process kept its lock")
            time.sleep(0.2)
        with open(state) as f:
            done = json.load(f)["epoch"]
        self.assertGreaterEqual(done, 1)

        # Continue (with fewer epochs, a change a continue may make): resumes, registers.
        train.epochs.set(done + 2)
        self.assertEqual(train.validate(), [])
        self._continue(train)
        self.assertTrue(train.isFinished(), train.getErrorMessage())
        model = train.outputModel
        self.assertTrue(os.path.exists(model.getFileName()))
        self.assertEqual(len(model.getHistory()["loss"]), done + 2)
        log = open(train.getLogPaths()[0]).read()
        self.assertIn(f"Resuming from the checkpoint of epoch {done}", log)

    # ---- input data survives every protocol that copies particles ----------------------
    def _records(self, parts, attrs=()):
        """{id: (shift x, shift y, defocus U, V, angle, voltage, *attrs)} of a set."""
        shifts = convert.particle_shifts(parts)
        out = {}
        for p, sh in zip(parts.iterItems(orderBy="id"), shifts):
            ctf = p.getCTF()
            out[p.getObjId()] = (round(float(sh[0]), 5), round(float(sh[1]), 5),
                                 ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle(),
                                 p.getAcquisition().getVoltage(),
                                 p.getLocation()) + tuple(
                round(float(getattr(p, a).get()), 6) for a in attrs)
        return out

    def _untrainedModel(self, pixel_size):
        """A tiny untrained distance model, imported (what recover needs to run)."""
        from orientlearn.core import model_io, network
        path = os.path.abspath(self.proj.getPath("untrained.keras"))
        model = network.build_embedding_network("resnet", n_features=8, seed=0)
        model_io.save_distance_model(model, path, dict(image_size=32, pixel_size=pixel_size,
                                                       symmetry="C1", head="rotation"))
        imp = self.newProtocol(OrientLearnProtImportModel, modelFile=path)
        self.launchProtocol(imp)
        return imp.outputModel

    @pytest.mark.slow
    def test_copies_keep_shifts_ctf_ids_and_attributes(self):
        from orientlearn.protocols import OrientLearnProtAspire, OrientLearnProtRefine
        from orientlearn.protocols.protocol_aspire import QUATERNIONS_FILE
        from orientlearn.protocols.protocol_compare import ERROR_ATTR
        from orientlearn.protocols.protocol_recover import CONFIDENCE_ATTR
        sim = self._simulate(40, noiseMode=1, sigma2=1.0, maxShift=2.0, doCtf=True, seed=12)
        source = self._records(sim.outputParticles)
        self.assertGreater(max(abs(r[0]) + abs(r[1]) for r in source.values()), 0.5)
        model = self._untrainedModel(sim.outputParticles.getSamplingRate())

        recover = self.newProtocol(OrientLearnProtRecover, inputParticles=sim.outputParticles,
                                   inputModel=model, nNeighbors=8, nRandom=2, nSteps=20)
        self.launchProtocol(recover)
        recovered = self._records(recover.outputParticles, [CONFIDENCE_ATTR])
        self.assertEqual({k: v[:7] for k, v in recovered.items()}, source)

        compare = self.newProtocol(OrientLearnProtCompare,
                                   inputParticles=recover.outputParticles,
                                   referenceParticles=sim.outputParticles)
        self.launchProtocol(compare)
        compared = self._records(compare.outputParticles, [CONFIDENCE_ATTR, ERROR_ATTR])
        self.assertEqual({k: v[:8] for k, v in compared.items()}, recovered)

        # The attributes of an earlier protocol survive a later one.
        again = self.newProtocol(OrientLearnProtRecover, inputParticles=compare.outputParticles,
                                 inputModel=model, nNeighbors=8, nRandom=2, nSteps=20)
        self.launchProtocol(again)
        kept = self._records(again.outputParticles, [ERROR_ATTR])
        self.assertEqual(kept, {k: v[:7] + v[8:] for k, v in compared.items()})

        refine = self.newProtocol(OrientLearnProtRefine, inputParticles=compare.outputParticles,
                                  maxIterations=1, minIterations=1, levels=1, maxShift=1.0)
        self.launchProtocol(refine)
        refined = self._records(refine.outputParticles, [CONFIDENCE_ATTR, ERROR_ATTR])
        # Offsets are refined (its job); all else is the input's.
        self.assertEqual({k: v[2:] for k, v in refined.items()},
                         {k: v[2:] for k, v in compared.items()})

        # ASPIRE's output step (ASPIRE itself is not needed to check what it copies).
        aspire = self.newProtocol(OrientLearnProtAspire, inputParticles=compare.outputParticles)
        self.proj._setupProtocol(aspire)
        aspire.makePathsAndClean()
        np.savez(aspire._getExtraPath(QUATERNIONS_FILE), ids=np.array(sorted(compared)),
                 quaternions=geometry.uniform_quaternions(len(compared), seed=1))
        aspire.createOutputStep()
        self.assertEqual(self._records(aspire.outputParticles, [CONFIDENCE_ATTR, ERROR_ATTR]),
                         compared)


# ------------------------------------------------------------------ 2. FSC refusals

@pytest.mark.parametrize("curve", [[], [np.nan] * 5, [1.0, np.nan, np.nan, np.nan, np.nan],
                                   [np.inf, np.nan, np.nan, np.nan, np.nan]])
def test_resolution_of_an_empty_or_nan_curve_is_an_error(curve):
    from orientlearn.core import fsc
    freq = np.linspace(0.0, 0.4, len(curve))
    # Was: 1 / max(freq), the Nyquist limit, as if the maps agreed at every shell.
    with pytest.raises(ValueError, match="no resolution"):
        fsc.resolution_at(freq, curve, 0.143)


def test_fsc_of_blank_or_nan_maps_is_an_error():
    from orientlearn.core import fsc
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(16, 16, 16))
    blank = np.zeros((16, 16, 16))
    freq, curve = fsc.fsc(blank, blank, pixel_size=2.0)
    with pytest.raises(ValueError, match="no resolution"):
        fsc.resolution_at(freq, curve, 0.5)
    nan_map = vol.copy()
    nan_map[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fsc.fsc(vol, nan_map, pixel_size=2.0)
    # A gap (a shell without power) ends the curve: never Nyquist across it.
    freq = np.linspace(0.0, 0.25, 6)
    assert fsc.resolution_at(freq, [1.0, 0.95, 0.9, np.nan, 0.9, 0.9], 0.143) == \
        pytest.approx(1 / 0.1)
