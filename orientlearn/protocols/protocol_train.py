"""Protocols ``train`` and ``import trained model``: the learned orientation distance."""
import json
import os
import shutil

import numpy as np
import pyworkflow.protocol.params as params
from pwem.protocols import Prot3D, ProtImport
from pyworkflow.constants import PROD
from pyworkflow.protocol.constants import MODE_RESUME

from .. import convert
from ..constants import ARCHITECTURES, DISTANCE_HEADS, LOSSES
from ..core import geometry
from ..objects import DistanceModel
from .protocol_base import OrientLearnProtBase

MODEL_FILE = "distance_model.keras"
HISTORY_FILE = "training_history.json"
EVALUATION_FILE = "validation_distances.npz"
CHECKPOINT_DIR = "checkpoints"
#: Beside the checkpoint: the parameters it was trained with (a continued run must match).
CHECKPOINT_PARAMS_FILE = "protocol_params.json"
#: Parameters a continued run may change and still resume the checkpoint.
RESUMABLE_CHANGES = ("epochs", "patience", "stepsPerEpoch")


def _resample_to(images, size):
    from ..core.image_ops import downsample
    return images if images.shape[-1] == size else downsample(images, size)


class OrientLearnProtTrain(OrientLearnProtBase, Prot3D):
    """Train the Siamese network that estimates the angle between two particles' orientations.

    The network G_w embeds each image; the distance between two embeddings (the angle
    between feature vectors, in [0, pi]) is trained to match the true distance d_q
    between the particles' orientations (eq. 3 of Banjac et al.), taken as the minimum
    over the protein's symmetry group. Batches supervise all pairs of their images,
    weighted so that true distances are uniform on [0, pi]; mirrored and in-plane-rotated
    copies teach the network chirality and in-plane angle; noise, shifts and CTF are
    augmented on the fly. Training resumes from its last checkpoint when continued.
    """
    _label = "train distance"
    _usesTensorFlow = True
    _devStatus = PROD
    _possibleOutputs = {"outputModel": DistanceModel}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.MultiPointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj",
                      important=True, label="Training particles",
                      help="One or more sets of particles with known orientations (from "
                           "'simulate' or a refined data set). Several sets (e.g. several "
                           "proteins) are mixed; pairs are only formed within a set.")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      label="Symmetry group",
                      help="True distances are the minimum over this group. "
                           + geometry.SYMMETRY_HELP)
        form.addParam("imageSize", params.IntParam, default=64,
                      label="Network image size (px)",
                      help="Images are Fourier-resampled to this box before training "
                           "(0 keeps the input box). 48-64 px is fast on a CPU; the paper "
                           "used 116 px.")
        form.addSection(label="Network")
        form.addParam("architecture", params.EnumParam, default=0, choices=ARCHITECTURES,
                      display=params.EnumParam.DISPLAY_HLIST, label="Architecture",
                      help="resnet: a fast residual network with an early downsampling "
                           "stem (default). paper: seven conv+max-pool blocks, 32-512 "
                           "filters, as in the paper. Both end in global average pooling "
                           "(shift-invariant, any image size).")
        form.addParam("distanceHead", params.EnumParam, default=0, choices=DISTANCE_HEADS,
                      display=params.EnumParam.DISPLAY_HLIST, label="Distance head",
                      help="How the cosine c between two images' features becomes a "
                           "distance. rotation (default): arccos((3c - 1)/2), a kernel "
                           "that can represent the distance between orientations exactly, "
                           "so large distances do not plateau. angle: arccos(c), the "
                           "paper's d_f, which must underestimate large distances.")
        form.addParam("nFeatures", params.IntParam, default=64, validators=[params.GT(1)],
                      label="Feature dimension",
                      help="Length of the embedding; the paper found 16 already suffices.")
        form.addSection(label="Training")
        form.addParam("epochs", params.IntParam, default=30, validators=[params.GT(0)],
                      label="Epochs", help="Maximum number of passes over the training set.")
        form.addParam("batchSize", params.IntParam, default=64, validators=[params.GT(1)],
                      label="Batch size",
                      help="Images per batch; all B(B-1)/2 pairs of a batch are supervised.")
        form.addParam("learningRate", params.FloatParam, default=1e-3,
                      validators=[params.GT(0)], label="Learning rate", help="Adam step size.")
        form.addParam("lossFunction", params.EnumParam, default=0, choices=LOSSES,
                      display=params.EnumParam.DISPLAY_HLIST, label="Loss",
                      help="mse: the paper's squared error; mae: absolute error, more "
                           "robust to pairs the network cannot resolve.")
        form.addParam("validationFraction", params.FloatParam, default=0.2,
                      validators=[params.Range(0.05, 0.5)], label="Validation fraction",
                      help="Fraction of the particles (not pairs) held out for validation "
                           "and early stopping.")
        form.addParam("patience", params.IntParam, default=8,
                      expertLevel=params.LEVEL_ADVANCED, label="Early-stopping patience",
                      help="Stop after this many epochs without a better validation loss; "
                           "the best weights are kept.")
        form.addParam("stepsPerEpoch", params.IntParam, default=0,
                      expertLevel=params.LEVEL_ADVANCED, label="Steps per epoch",
                      help="Batches per epoch; 0: one pass over the training particles.")
        form.addSection(label="Augmentation")
        form.addParam("augmentTransforms", params.BooleanParam, default=True,
                      label="Mirror and rotate?",
                      help="Add mirrored and 90-degree-rotated copies of the images to each "
                           "batch, with their orientations transformed accordingly, so the "
                           "network learns to tell an image from its mirror (which the "
                           "recovery needs).")
        form.addParam("noiseMin", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED, label="Added noise sigma^2 min",
                      help="Extra Gaussian noise with a variance drawn per image between "
                           "min and max (relative to unit-variance images).")
        form.addParam("noiseMax", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED, label="Added noise sigma^2 max",
                      help="Upper end of the noise augmentation (0: none).")
        form.addParam("shiftMax", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED, label="Random shift (px)",
                      help="Random integer shifts up to this many pixels.")
        self._addSeedParam(form)
        self._addResourceParams(form)

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.prepareStep, signature, needsGPU=False)
        self._insertFunctionStep(self.trainStep, signature, needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS -------------------------------------------
    def _targetSize(self):
        first = self.inputParticles[0].get()
        return self.imageSize.get() or first.getXDim()

    def prepareStep(self, signature=None):
        """Read, check and resample the training sets into tmp/ (``signature``: the
        parameters, compared by Scipion on *continue*)."""
        size = self._targetSize()
        arrays = {}
        for k, pointer in enumerate(self.inputParticles):
            parts = pointer.get()
            ids, images = convert.read_particle_images(parts)
            self._checkImages(ids, images, f"Training set {k + 1}")
            _, quats, _ = convert.particle_orientations(parts)
            arrays[f"images_{k}"] = _resample_to(images, size).astype(np.float32)
            arrays[f"quaternions_{k}"] = quats
            self.info(f"Set {k + 1}: {len(ids)} particles, {images.shape[-1]} -> {size} px.")
        np.savez(self._getTmpPath("training_data.npz"), **arrays)

    def _loadTrainingData(self):
        if not os.path.exists(self._getTmpPath("training_data.npz")):
            self.prepareStep()          # tmp/ was cleaned since: read the inputs again
        with np.load(self._getTmpPath("training_data.npz")) as data:
            n = len([k for k in data.files if k.startswith("images_")])
            return ([data[f"images_{k}"] for k in range(n)],
                    [data[f"quaternions_{k}"] for k in range(n)])

    # ---- the checkpoint must come from the same parameters -------------------------
    def _checkpointParams(self):
        """The parameters that shape the model and its data (a checkpoint from other
        values cannot be resumed): the step signature less ``RESUMABLE_CHANGES``, with
        the effective image size."""
        params_ = {k: v for k, v in self._stepSignature().items() if k not in RESUMABLE_CHANGES}
        if self.inputParticles and self.inputParticles[0].get() is not None:
            params_["imageSize"] = self._targetSize()
        return json.loads(json.dumps(params_))

    def _checkpointPath(self, name=""):
        return os.path.join(self._getExtraPath(CHECKPOINT_DIR), name)

    def _hasCheckpoint(self):
        return os.path.exists(self._checkpointPath("state.json"))

    def _checkpointMismatch(self):
        """'' if the saved checkpoint (if any) was trained with the current parameters,
        else a message naming what changed and saying to use *restart*."""
        if not self._hasCheckpoint():
            return ""
        path = self._checkpointPath(CHECKPOINT_PARAMS_FILE)
        if not os.path.exists(path):
            changed = ["(no record of the parameters it was trained with)"]
        else:
            with open(path) as f:
                saved = json.load(f)
            now = self._checkpointParams()
            changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}"
                       for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        if not changed:
            return ""
        return ("The training checkpoint in this run's extra/checkpoints was made with other "
                f"parameters: {'; '.join(changed)}. A *continue* can only change "
                f"{', '.join(RESUMABLE_CHANGES)}. Use *restart* to train again from scratch "
                "with the new parameters (or set them back to continue).")

    def trainStep(self, signature=None):
        """Train (resuming from the checkpoint in extra/ if this run has one)."""
        self._configureDevices()
        from ..core import model_io, training
        mismatch = self._checkpointMismatch()
        if mismatch:
            raise ValueError(mismatch)
        if self._hasCheckpoint():
            with open(self._checkpointPath("state.json")) as f:
                done = json.load(f).get("epoch", 0)
            self.info(f"Resuming from the checkpoint of epoch {done} "
                      f"({self._checkpointPath()}).")
        else:
            os.makedirs(self._checkpointPath(), exist_ok=True)
            with open(self._checkpointPath(CHECKPOINT_PARAMS_FILE), "w") as f:
                json.dump(self._checkpointParams(), f, indent=1)
        images, quats = self._loadTrainingData()
        epochs = self.epochs.get()
        log_epoch = self._epochLogger(epochs)
        model, history = training.train_distance_model(
            images, quats, symmetry=self.symmetryGroup.get(),
            architecture=ARCHITECTURES[self.architecture.get()], n_features=self.nFeatures.get(),
            epochs=epochs, batch_size=self.batchSize.get(), learning_rate=self.learningRate.get(),
            loss=LOSSES[self.lossFunction.get()],
            validation_fraction=self.validationFraction.get(), patience=self.patience.get(),
            steps_per_epoch=self.stepsPerEpoch.get() or None,
            augmentation=dict(rotations=bool(self.augmentTransforms),
                              mirror=bool(self.augmentTransforms),
                              copy_fraction=0.5 if self.augmentTransforms else 0.0,
                              noise_variance=(self.noiseMin.get(), self.noiseMax.get()),
                              max_shift=int(round(self.shiftMax.get()))),
            checkpoint_dir=self._checkpointPath(), seed=self.seed.get(),
            progress=log_epoch, head=self._head())
        with open(self._getExtraPath(HISTORY_FILE), "w") as f:
            json.dump(history, f, indent=1, default=float)
        model_io.save_distance_model(model, self._getExtraPath(MODEL_FILE), self._metadata(images))
        self._evaluate(model, images, quats, history)

    def _epochLogger(self, epochs):
        import time
        start = time.time()

        def log(epoch, n_epochs, logs):
            self._checkRunLockOwned()       # stop if a restart cleaned our folder
            elapsed = time.time() - start
            eta = elapsed / max(epoch, 1) * (n_epochs - epoch)
            from ..core.progress import format_duration
            text = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if np.isscalar(v))
            self.info(f"Epoch {epoch}/{n_epochs}: {text}; elapsed {format_duration(elapsed)}, "
                      f"ETA {format_duration(eta)} (at most; early stopping may end sooner)")
        return log

    def _metadata(self, images):
        first = self.inputParticles[0].get()
        size = self._targetSize()
        n = sum(len(x) for x in images)
        return dict(image_size=size,
                    pixel_size=first.getSamplingRate() * first.getXDim() / size,
                    symmetry=self.symmetryGroup.get(),
                    architecture=ARCHITECTURES[self.architecture.get()],
                    n_features=self.nFeatures.get(),
                    training_sets=[p.get().getNameId() if hasattr(p.get(), "getNameId")
                                   else str(p.get()) for p in self.inputParticles],
                    n_particles=n, seed=self.seed.get(), head=self._head())

    def _head(self):
        return DISTANCE_HEADS[self.distanceHead.get()]

    def _evaluate(self, model, images, quats, history):
        """Estimated vs true distances on held-out particles, for the viewer (paper Fig. 6):
        ``pipeline.pair_distances`` on all pairs of up to 400 validation particles."""
        from ..core import model_io, pipeline
        from ..core.model import DistanceModel as BoundModel
        from ..core.source import ArraySource
        idx = model_io.validation_indices([len(x) for x in images],
                                          self.validationFraction.get(), seed=self.seed.get())[0]
        meta = self._metadata(images)
        held_out = ArraySource(images[0][idx], meta["pixel_size"], quaternions=quats[0][idx])
        d_true, d_est = pipeline.pair_distances(held_out, BoundModel(model, meta),
                                                symmetry=self.symmetryGroup.get(),
                                                seed=self.seed.get(), max_particles=400)
        np.savez(self._getExtraPath(EVALUATION_FILE), d_true=d_true, d_est=d_est)
        mae = float(np.mean(np.abs(d_est - d_true)))
        self.info(f"Validation pairs: mean |d_hat - d_q| = {mae:.3f} rad over {len(d_true)} "
                  "pairs.")

    def createOutputStep(self, signature=None):
        first = self.inputParticles[0].get()
        size = self._targetSize()
        if not os.path.exists(self._getExtraPath(MODEL_FILE)):
            raise FileNotFoundError(f"The trained model {self._getExtraPath(MODEL_FILE)} is "
                                    "missing: use *restart* to train again.")
        model = DistanceModel(filename=self._getExtraPath(MODEL_FILE), imageSize=size,
                              samplingRate=first.getSamplingRate() * first.getXDim() / size,
                              symmetry=self.symmetryGroup.get(),
                              historyFile=self._getExtraPath(HISTORY_FILE))
        hist = model.getHistory()
        best = min(hist.get("val_loss") or [float("nan")])
        model.setTrainingSummary(
            f"{ARCHITECTURES[self.architecture.get()]} net, {len(hist.get('loss', []))} epochs "
            f"on {sum(p.get().getSize() for p in self.inputParticles)} particles; best "
            f"validation L_DE {best:.4f}")
        self._defineOutputs(outputModel=model)
        for p in self.inputParticles:
            self._defineSourceRelation(p, model)

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        errors = self._validateNotRunning()
        if len(self.inputParticles) == 0:
            return errors + ["Give at least one set of training particles."]
        sizes, rates = set(), set()
        for k, pointer in enumerate(self.inputParticles):
            parts = pointer.get()
            errors += self._validateParticles(parts, f"Training set {k + 1}",
                                              needOrientations=True,
                                              minCount=max(2 * self.batchSize.get(), 10))
            if parts is not None and parts.getSize():
                sizes.add(parts.getXDim())
                rates.add(round(parts.getSamplingRate() * parts.getXDim(), 1))
        if len(rates) > 1:
            errors.append("The training sets have different box sizes in Angstrom "
                          f"({sorted(rates)}): resample them to one physical box first.")
        errors += self._validateSymmetry(self.symmetryGroup.get())
        if self.imageSize.get() and self.imageSize.get() < 16:
            errors.append("Network image size must be at least 16 px (or 0).")
        if self.noiseMin.get() > self.noiseMax.get():
            errors.append("Noise augmentation: min must not exceed max.")
        if not errors and self.runMode.get() == MODE_RESUME:
            mismatch = self._checkpointMismatch()
            if mismatch:
                errors.append(mismatch)
        return errors

    def _summary(self):
        if not hasattr(self, "outputModel"):
            return ["Output not ready yet."]
        m = self.outputModel
        return [m.getTrainingSummary(),
                f"Images of {m.getImageSize()} px at {m.getSamplingRate():.3f} A/px, "
                f"symmetry {m.getSymmetry()}."]

    def _methods(self):
        if not hasattr(self, "outputModel"):
            return []
        return ["A Siamese network was trained to estimate the distance between the "
                "orientations of two projections [Banjac2021], supervising all pairs of "
                f"each batch of {self.batchSize.get()} images for up to {self.epochs.get()} "
                "epochs."]

    def _citations(self):
        return ["Banjac2021"]


class OrientLearnProtImportModel(OrientLearnProtBase, ProtImport):
    """Import a distance network trained elsewhere (a .keras file and its .json metadata)."""
    _label = "import trained model"
    _devStatus = PROD
    _possibleOutputs = {"outputModel": DistanceModel}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("modelFile", params.PathParam, important=True,
                      label="Model file (.keras)",
                      help="A model saved by orientlearn (train protocol or "
                           "orientlearn.core.model_io.save_distance_model); its metadata "
                           "JSON (same name, .json) must be beside it.")
        form.addParam("samplingRate", params.FloatParam, default=0.0,
                      label="Sampling rate (A/px)",
                      help="Pixel size of the images the model expects; 0 reads it from "
                           "the metadata. A value given here must agree with the metadata "
                           "(within 2%): a model only works at the pixel size it was "
                           "trained at, so an override is for metadata without one.")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.importStep, self._stepSignature(), needsGPU=False)

    def importStep(self, signature=None):
        from ..core import model_io
        src = self.modelFile.get()
        _, meta = model_io.load_distance_model(src)  # fails clearly if corrupt
        dst = self._getExtraPath(MODEL_FILE)
        shutil.copy(src, dst)
        shutil.copy(os.path.splitext(src)[0] + ".json", os.path.splitext(dst)[0] + ".json")
        hist = None
        src_hist = os.path.join(os.path.dirname(src), HISTORY_FILE)
        if os.path.exists(src_hist):
            hist = self._getExtraPath(HISTORY_FILE)
            shutil.copy(src_hist, hist)
        model = DistanceModel(filename=dst, imageSize=int(meta["image_size"]),
                              samplingRate=self.samplingRate.get() or float(meta["pixel_size"]),
                              symmetry=meta.get("symmetry", "C1"), historyFile=hist,
                              trainingSummary=f"Imported from {src}")
        self._defineOutputs(outputModel=model)

    def _validate(self):
        src = self.modelFile.get()
        if not src or not os.path.exists(src):
            return [f"Model file {src!r} does not exist."]
        meta_path = os.path.splitext(src)[0] + ".json"
        if not os.path.exists(meta_path):
            return [f"Metadata {meta_path} is missing beside the model file."]
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            meta_rate = float(meta.get("pixel_size") or 0)
            int(meta["image_size"])
        except (ValueError, KeyError, TypeError) as e:
            return [f"Metadata {meta_path} is unreadable or incomplete ({e!r}): re-save the "
                    "model with orientlearn."]
        override = self.samplingRate.get() or 0.0
        errors = []
        if override and meta_rate and abs(override - meta_rate) > 0.02 * meta_rate:
            errors.append(f"Sampling rate {override:g} A/px disagrees with the model's "
                          f"metadata ({meta_rate:g} A/px, {override / meta_rate:.2f}x): the "
                          "model only works at the pixel size it was trained at. Set 0 to "
                          "use the metadata.")
        errors += self._validatePixelSize(override or meta_rate or None,
                                          "The model's sampling rate")
        return errors

    def _summary(self):
        if hasattr(self, "outputModel"):
            return [str(self.outputModel), self.outputModel.getTrainingSummary()]
        return ["Output not ready yet."]

    def _citations(self):
        return ["Banjac2021"]
