"""Protocol ``common lines (ASPIRE)``: a peer baseline, ASPIRE's CLSyncVoting.

ASPIRE runs in a subprocess (``orientlearn.core.peer_aspire``), in the plugin's own
environment when ``aspire`` is installed there, otherwise in a separate one named by the
plugin variable ``ORIENTLEARN_ASPIRE_PYTHON`` (default: the venv made by
``python -m orientlearn.core.peer_aspire create``).
"""
import json
import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtInitialVolume
from pyworkflow.constants import BETA

from .. import convert
from ..core import peer_aspire
from .protocol_base import OrientLearnProtBase

WORK_DIR = "aspire"                   # under extra/: runner, .npy files, ASPIRE's logs/
INFO_FILE = "aspire_info.json"
QUATERNIONS_FILE = "aspire_orientations.npz"
#: Above this many particles, warn: CLSyncVoting's voting grows as N^3.
MANY_PARTICLES = 1000


def aspire_python():
    """``(python, message)`` for the ASPIRE environment the protocol would use now."""
    from .. import Plugin
    return Plugin.getAspirePython()


class OrientLearnProtAspire(OrientLearnProtBase, ProtInitialVolume):
    """Ab initio orientations by common lines: ASPIRE's CLSyncVoting (a peer baseline).

    Each particle's 2-D Fourier transform is sampled on polar lines; the common line of
    every pair of images is found by correlation, the pairs' relative rotations are
    fixed by voting over third images (Singer et al. 2010), and all orientations are read
    off the top eigenvectors of the synchronization matrix (Shkolnisky & Singer 2012).
    ASPIRE runs in its own process (and, if so configured, in its own Python
    environment); its rotations are converted to Scipion's ALIGN_PROJ convention.

    Use it as a baseline for 'recover orientations': run both on the same particles and
    compare each with 'compare orientations' (e.g. against the ground truth of
    'simulate'). Common lines on raw particles work on clean or high-SNR images only (at
    an SNR of 1/4 the result is near random); ASPIRE's answer to noise is 2-D class
    averaging first. The result is defined up to a global rotation and handedness, like
    ours. Shifts are not estimated: output shifts are zero.
    """
    _label = "common lines (ASPIRE)"
    _devStatus = BETA
    _possibleOutputs = {"outputParticles": SetOfParticles}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      important=True, label="Particles",
                      help="Particles to orient (square images; orientations they may carry "
                           "are ignored). Common lines need clean or high-SNR images, e.g. "
                           "noiseless simulations or class averages. Run time grows as the "
                           "cube of the number of particles: a few hundred take minutes.")
        form.addParam("downsampleBox", params.IntParam, default=0,
                      validators=[params.GE(0)], label="Downsample to box (px)",
                      help="Fourier-downsample the images to this box before ASPIRE (faster; "
                           "common lines need little resolution, 32-64 px is plenty). "
                           "0 keeps the particles' box.")
        form.addSection(label="Common lines")
        form.addParam("nTheta", params.IntParam, default=360, validators=[params.GE(8)],
                      label="Angular resolution (n_theta)",
                      help="Number of polar lines per image in ASPIRE's CLSyncVoting "
                           "(n_theta, must be even): angular step 360/n_theta degrees for "
                           "the common-line search. 360 is ASPIRE's default.")
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Random seed",
                      help="Seeds numpy's global generator in the ASPIRE process. "
                           "CLSyncVoting itself is deterministic given the images, so the "
                           "same inputs give the same result.")
        self._addResourceParams(form, gpu=False)

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.estimateStep, signature, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS -------------------------------------------
    def estimateStep(self, signature=None):
        from ..core import image_ops
        python, where = aspire_python()
        if python is None:
            raise RuntimeError(where)
        self.info(f"ASPIRE runs with {python} ({where}).")
        parts = self.inputParticles.get()
        ids, images = convert.read_particle_images(parts)
        self._checkImages(ids, images, "Input particles")
        pixel_size = parts.getSamplingRate()
        box = self.downsampleBox.get() or images.shape[-1]
        if box != images.shape[-1]:
            self.info(f"Fourier-downsampling {len(images)} images {images.shape[-1]} -> {box} px.")
            pixel_size *= images.shape[-1] / box
            images = image_ops.downsample(images, box)
        self.info(f"CLSyncVoting (n_theta {self.nTheta.get()}) on {len(images)} images of "
                  f"{box} px ({pixel_size:.3f} A/px).")
        rotations, info = peer_aspire.run_aspire(
            python, images, pixel_size, n_theta=self.nTheta.get(),
            workdir=self._getExtraPath(WORK_DIR), seed=self.seed.get(), log=self.info)
        q = peer_aspire.rotations_to_quaternions(rotations)
        k, conj = peer_aspire.DEFAULT_CONVENTION
        info.update(python=python, environment=where, box=int(box),
                    pixel_size=float(pixel_size),
                    convention=peer_aspire.convention_name(k, conj))
        np.savez(self._getExtraPath(QUATERNIONS_FILE), ids=ids, quaternions=q,
                 aspire_rotations=rotations)
        with open(self._getExtraPath(INFO_FILE), "w") as f:
            json.dump(info, f, indent=1)
        # ASPIRE's inputs are a copy of the particles: keep its log, drop the bulk.
        for name in (peer_aspire.IMAGES_FILE,):
            path = os.path.join(self._getExtraPath(WORK_DIR), name)
            if os.path.exists(path):
                os.remove(path)
        self.info(f"ASPIRE {info.get('aspire_version')}: rotations estimated in "
                  f"{info['estimate_seconds']:.1f} s ({info['wall_seconds']:.1f} s with "
                  f"start-up), peak memory {info.get('peak_rss_mb', 0):.0f} MB.")

    def createOutputStep(self, signature=None):
        parts = self.inputParticles.get()
        res = self._loadArrays(QUATERNIONS_FILE)
        out = convert.copy_particles_with_orientations(self, parts, res["quaternions"])
        self._defineOutputs(outputParticles=out)
        self._defineTransformRelation(self.inputParticles, out)

    def getInfo(self):
        """What the ASPIRE run reported (versions, timings), or {} before it ran."""
        path = self._getExtraPath(INFO_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        errors = self._validateNotRunning()
        python, message = aspire_python()
        if python is None:
            errors.append(message)
        parts = self.inputParticles.get()
        errors += self._validateParticles(parts, "Input particles", minCount=3)
        if self.nTheta.get() % 2:
            errors.append(f"n_theta must be even (ASPIRE's requirement), not {self.nTheta.get()}.")
        box = self.downsampleBox.get()
        if parts is not None and parts.getSize() and box:
            x = parts.getXDim()
            if box > x:
                errors.append(f"Downsample box {box} px is larger than the particles' box "
                              f"{x} px: use 0 (no downsampling) or a smaller box.")
            elif box < 16:
                errors.append(f"Downsample box {box} px is too small for common lines; "
                              "use at least 16 px.")
        return errors

    def _warnings(self):
        parts = self.inputParticles.get()
        if parts is not None and parts.getSize() > MANY_PARTICLES:
            return [f"{parts.getSize()} particles: CLSyncVoting's time grows as the cube of "
                    "the number of particles (about 1 min for 200 particles of 48 px on 2 "
                    "CPU cores); consider a subset or class averages."]
        return []

    def _summary(self):
        info = self.getInfo()
        if not info or not hasattr(self, "outputParticles"):
            return ["Output not ready yet."]
        return [f"{self.outputParticles.getSize()} particles oriented by ASPIRE "
                f"{info.get('aspire_version')} CLSyncVoting (n_theta {info.get('n_theta')}) "
                f"on {info.get('box')} px images in {info.get('estimate_seconds', 0):.1f} s.",
                "Defined up to a global rotation and handedness; shifts not estimated (zero). "
                "Compare with 'compare orientations'."]

    def _methods(self):
        info = self.getInfo()
        if not info:
            return []
        return [f"Orientations were estimated by common lines with voting [Singer2010] and "
                f"synchronization [Shkolnisky2012] as implemented in ASPIRE "
                f"{info.get('aspire_version')} [ASPIRE] (CLSyncVoting, n_theta "
                f"{info.get('n_theta')}, images of "
                f"{info.get('box')} px at {info.get('pixel_size', 0):.2f} A/px)."]

    def _citations(self):
        return ["ASPIRE", "Shkolnisky2012", "Singer2010"]
