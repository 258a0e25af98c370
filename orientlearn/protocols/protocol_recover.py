"""Protocol ``recover``: orientations from learned distances, with no ground truth (eq. 4)."""
import json
import os
import zipfile

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtInitialVolume
from pyworkflow.constants import PROD

from .. import convert
from ..constants import RECOVERY_LOSSES
from ..core.pipeline import RECOVERY_DEFAULTS as DEFAULTS
from .protocol_base import OrientLearnProtBase

FEATURES_FILE = "features.npy"
RESULT_FILE = "recovered.npz"
HISTORY_FILE = "recovery_history.json"
CONFIDENCE_ATTR = "_orientlearn_residual"


class OrientLearnProtRecover(OrientLearnProtBase, ProtInitialVolume):
    """Recover the orientation of every particle from a trained distance network.

    Every particle is embedded once by the network, also after exact image-plane
    transforms (rotations by 90 degrees, mirror) whose effect on the orientation is known.
    A sparse graph links each particle to its nearest neighbours in feature space (over
    all transforms) plus random far particles; the orientations (unit quaternions) are
    found by making their distances match the estimated ones on the graph edges (eq. 4 of
    Banjac et al.). Edges between an image and a transformed image are not invariant to a
    rotation of the detector frame nor to the quaternion conjugation, so the result needs
    no ground truth: it is defined up to a global rotation of the object and handedness,
    which do not hinder reconstruction. Each particle gets a confidence score: its mean
    residual on the graph (radians, lower is better).
    """
    _label = "recover orientations"
    _usesTensorFlow = True
    _devStatus = PROD
    _possibleOutputs = {"outputParticles": SetOfParticles}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      important=True, label="Particles",
                      help="Particles to orient (they need no orientations). They are "
                           "Fourier-resampled to the model's pixel size and box.")
        form.addParam("inputModel", params.PointerParam, pointerClass="DistanceModel",
                      important=True, label="Trained distance model",
                      help="Output of 'train distance' or 'import trained model'.")
        form.addSection(label="Recovery")
        form.addParam("useTransforms", params.BooleanParam, default=True,
                      label="Resolve the detector frame from the images?",
                      help="Also compare particles with rotated and mirrored copies of the "
                           "others. This pins the frame (no O(4) ambiguity left) so the "
                           "output can be reconstructed without ground truth. Only switch "
                           "off to reproduce the paper's setting.")
        form.addParam("nNeighbors", params.IntParam, default=DEFAULTS["n_neighbors"],
                      validators=[params.GT(0)], label="Neighbours per particle",
                      help="Nearest neighbours in feature space linked to each particle. "
                           "Small estimated distances are the reliable ones.")
        form.addParam("nRandom", params.IntParam, default=DEFAULTS["n_random"],
                      validators=[params.GE(0)], label="Random pairs per particle",
                      help="Random far pairs per particle; they keep the global shape.")
        form.addParam("robustLoss", params.EnumParam,
                      default=RECOVERY_LOSSES.index(DEFAULTS["loss"]), choices=RECOVERY_LOSSES,
                      display=params.EnumParam.DISPLAY_HLIST,
                      expertLevel=params.LEVEL_ADVANCED, label="Loss on the distances",
                      help="cauchy (default) and huber limit the pull of false neighbours "
                           "(noisy images whose estimated distance is wrong); l2 is the "
                           "paper's eq. 4.")
        form.addParam("lossScale", params.FloatParam, default=DEFAULTS["loss_scale"],
                      validators=[params.GT(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Loss scale (rad)",
                      help="Residuals beyond this scale count less (cauchy, huber).")
        form.addParam("nSteps", params.IntParam, default=DEFAULTS["n_steps"],
                      validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Optimisation steps",
                      help="Maximum Adam steps on the sphere (stops earlier on convergence). "
                           "The start is spectral (from the graph's eigenvectors), so no "
                           "random restarts are needed.")
        form.addParam("learningRate", params.FloatParam, default=DEFAULTS["learning_rate"],
                      expertLevel=params.LEVEL_ADVANCED, label="Learning rate",
                      help="Adam step size on the quaternions.")
        self._addSeedParam(form)
        self._addResourceParams(form)

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.recoverStep, signature, needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS -------------------------------------------
    def recoverStep(self, signature=None):
        """Read the particles (in batches) and the model, one pipeline call, write."""
        self._configureDevices()
        if self._recoverInPluginEnvironment():
            return
        from ..core import pipeline
        from ..core.model import DistanceModel
        source = convert.particle_source(self.inputParticles.get(), ctf=False)
        model = DistanceModel.load(self.inputModel.get().getFileName())
        new, box = model.grid_for(source.image_size, source.pixel_size)
        self.info(f"{source}; model {model}: particles resampled to {new} px, box {box} px.")
        result = pipeline.recover_particles(
            source, model, use_transforms=bool(self.useTransforms), seed=self.seed.get(),
            embed_progress=self._progress("Embedding", "images"),
            progress=self._progress("Recovery", "steps"),
            n_neighbors=self.nNeighbors.get(), n_random=self.nRandom.get(),
            loss=RECOVERY_LOSSES[self.robustLoss.get()], loss_scale=self.lossScale.get(),
            n_steps=self.nSteps.get(), learning_rate=self.learningRate.get())
        np.save(self._getExtraPath(FEATURES_FILE), result.features)
        np.savez(self._getExtraPath(RESULT_FILE), quaternions=result.quaternions,
                 residual=result.residual)
        with open(self._getExtraPath(HISTORY_FILE), "w") as f:
            json.dump({"loss": [float(v) for v in result.loss_history],
                       "final_loss": result.loss, "init": result.info.get("init", "")}, f)
        self.info(f"Final L_OR {result.loss:.5g}; median residual "
                  f"{np.nanmedian(result.residual):.3f} rad ({result.info.get('init', '')} start).")

    def _recoverInPluginEnvironment(self):
        """The same recovery by ``orientlearn recover`` in the plugin's own environment
        (``scipion3 installb orientlearn``), through ``runJob``; the particles go as a
        STAR file naming their stacks. False, running nothing, without that environment."""
        from .. import Plugin
        if not Plugin.usesOwnEnvironment():
            return False
        from ..core.source import write_star
        star_in = write_star(self._getExtraPath("input_particles.star"),
                             convert.particle_source(self.inputParticles.get(), ctf=False))
        star_out = self._getExtraPath("recovered.star")
        args = [star_in, "--model", self.inputModel.get().getFileName(), "--out", star_out,
                "--neighbors", self.nNeighbors.get(), "--random", self.nRandom.get(),
                "--loss", RECOVERY_LOSSES[self.robustLoss.get()],
                "--loss-scale", self.lossScale.get(), "--steps", self.nSteps.get(),
                "--lr", self.learningRate.get(), "--seed", self.seed.get(),
                "--features", self._getExtraPath(FEATURES_FILE),
                "--threads", self._threadCount(), "--overwrite"]
        if not self.useTransforms:
            args.append("--no-transforms")
        self.info(f"Recovering in the plugin's environment: {Plugin.getProgram()}")
        self._runOrientlearn("recover", args)
        with np.load(os.path.splitext(star_out)[0] + ".npz") as res:
            quaternions, residual = res["quaternions"], res["residual"]
            history = [float(v) for v in res["loss_history"]]
        np.savez(self._getExtraPath(RESULT_FILE), quaternions=quaternions, residual=residual)
        with open(self._getExtraPath(HISTORY_FILE), "w") as f:
            json.dump({"loss": history, "final_loss": history[-1], "init": ""}, f)
        self.info(f"Final L_OR {history[-1]:.5g}; median residual "
                  f"{np.nanmedian(residual):.3f} rad.")
        return True

    def createOutputStep(self, signature=None):
        parts = self.inputParticles.get()
        res = self._loadArrays(RESULT_FILE)
        out = convert.copy_particles_with_orientations(
            self, parts, res["quaternions"], extra={CONFIDENCE_ATTR: res["residual"]})
        self._defineOutputs(outputParticles=out)
        self._defineTransformRelation(self.inputParticles, out)

    def getLossHistory(self):
        path = self._getExtraPath(HISTORY_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)["loss"]
        return []

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        errors = self._validateNotRunning()
        errors += self._validateParticles(self.inputParticles.get(), "Input particles",
                                          minCount=max(10, self.nNeighbors.get() + 2))
        model = self.inputModel.get()
        if model is None:
            return errors + ["Trained distance model: not set."]
        fn = model.getFileName()
        if not fn or not os.path.exists(fn):
            errors.append(f"The model file {fn} is missing: re-run or re-import the model.")
        elif not zipfile.is_zipfile(fn):
            errors.append(f"The model file {fn} is corrupt (not a Keras archive): re-run or "
                          "re-import the model.")
        errors += self._validatePixelSize(model.getSamplingRate(),
                                          "The model's sampling rate")
        parts = self.inputParticles.get()
        if parts is not None and parts.getSize() and model.getSamplingRate():
            box_A = parts.getXDim() * parts.getSamplingRate()
            model_A = model.getImageSize() * model.getSamplingRate()
            if abs(box_A - model_A) > 0.15 * model_A:
                errors.append(f"The particles' box is {box_A:.0f} A but the model was trained "
                              f"on {model_A:.0f} A boxes: re-extract or resize the particles "
                              "to a similar physical box (they are resampled to the model's "
                              "pixel size automatically).")
        return errors

    def _summary(self):
        if not hasattr(self, "outputParticles"):
            return ["Output not ready yet."]
        loss = self.getLossHistory()
        res = self._loadArrays(RESULT_FILE)["residual"]
        return [f"{self.outputParticles.getSize()} particles oriented; final L_OR "
                f"{loss[-1]:.4g}; median residual {np.degrees(np.median(res)):.1f} deg.",
                "Frame resolved from image transforms (no O(4) ambiguity)."
                if self.useTransforms else "Paper setting: defined up to O(4)."]

    def _methods(self):
        if not hasattr(self, "outputParticles"):
            return []
        return ["Orientations were recovered from distances estimated by a Siamese network "
                f"[Banjac2021] on a graph of {self.nNeighbors.get()} neighbours and "
                f"{self.nRandom.get()} random pairs per particle."]

    def _citations(self):
        return ["Banjac2021"]
