"""Protocol ``ab initio``: particles in, an initial map and orientations out, no map needed."""
import json
import os
import zipfile

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import FSC, SetOfFSCs, SetOfParticles, Volume
from pwem.protocols import ProtInitialVolume
from pyworkflow.constants import BETA
from pyworkflow.object import String

from .. import convert
from ..constants import GENERALIST_MODEL
from ..core import geometry
from .protocol_base import OrientLearnProtBase

RESULT_FILE = "abinitio.npz"
HISTORY_FILE = "abinitio_history.json"
MODEL_FILE = "model_finetuned.keras"
COMMON_LINES_MAP = "common_lines_map.mrc"
HALF_ATTR = "_orientlearn_half"
HAND_ATTR = "_orientlearn_hand"
HAND_NOTE = ("undetermined: projections cannot tell a map from its mirror image; check the "
             "hand on the map (e.g. alpha helices) and flip it if needed")
START_SHIFTS = ["centre of mass (reference-free)", "input offsets", "zero"]
START_SHIFT_KEYS = ["centre of mass", "input", "zero"]


def shipped_generalist():
    """Path of the generalist distance model shipped with the package, or None."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", GENERALIST_MODEL)
    return path if os.path.exists(path) else None


class OrientLearnProtAbInitio(OrientLearnProtBase, ProtInitialVolume):
    """Ab initio: orientations, offsets and an initial map from particles alone.

    With neither a distance model nor an initial volume, the first map comes from the
    particles alone: 2-D class averages oriented by common lines (ASPIRE), reconstructed
    and low-passed; a distance model is trained on its projections simulated like the
    data (as for an initial volume). Then, on a random subset of the particles (as
    cryoSPARC's ab initio does): the particles
    are centred without a reference, oriented with a distance model (embeddings under
    the exact detector transforms, then recovery from the estimated distances), two
    half maps are reconstructed from disjoint halves, and orientations and offsets are
    refined locally against each half's own map (gold standard). A model trained here on
    a map is then retrained on the refined map (optionally, a given model is fine-tuned
    on it), projections simulated like the data (the particles' own CTFs, box, pixel
    size, offsets and estimated noise level), and the particles are oriented again,
    centred by their refined offsets, for the rounds asked unless the half maps get
    worse. Finally every particle is oriented in the kept iteration's frame and refined
    against the map. Every lever (refinement, retraining, fine-tuning) is a form option;
    each iteration's resolution, FSC and how much the orientations moved are kept
    (viewer, extra/abinitio_history.json).
    The hand of the map cannot be determined from projections: the outputs say so.
    """
    _label = "ab initio"
    _usesTensorFlow = True
    _devStatus = BETA
    _possibleOutputs = {"outputVolume": Volume, "outputParticles": SetOfParticles,
                        "outputFSCs": SetOfFSCs}

    # -------------------------- DEFINE param functions ---------------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      important=True, label="Particles",
                      help="Picked and extracted particles, preferably with CTF estimates "
                           "(they need no orientations). White particles on a dark "
                           "background, as RELION expects. They are never modified: the "
                           "output is a new set.")
        form.addParam("particleDiameter", params.FloatParam, default=-1, important=True,
                      label="Particle diameter (A)",
                      help="Diameter of the particle in Angstrom, a little larger than the "
                           "longest dimension of the protein (RELION's mask diameter). Used "
                           "for the masks, the reference-free centring, the noise estimate "
                           "and to bring the particles to the scale a generalist model "
                           "expects.")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      label="Symmetry group", help=geometry.SYMMETRY_HELP)
        form.addParam("inputModel", params.PointerParam, pointerClass="DistanceModel",
                      allowsNull=True, label="Distance model",
                      help="A distance model from 'train distance' or 'import trained "
                           "model'. Empty: a model trained on the initial volume below when "
                           "one is given, else the generalist model shipped with "
                           "orientlearn when this installation has one, else a model "
                           "trained on a first map made from the particles alone (class "
                           "averages oriented by common lines, ASPIRE: see 'Class "
                           "averages'). A model trained on projections of this very "
                           "protein's final map is not ab initio (it needs the map).")
        form.addParam("initialVolume", params.PointerParam, pointerClass="Volume",
                      allowsNull=True, label="Initial volume (optional)",
                      help="A coarse map of the protein to start from: an initial model "
                           "from RELION, cryoSPARC or Xmipp, or a related structure "
                           "low-passed to ~25 A. A new distance model is trained on its "
                           "projections simulated like your particles (their CTFs, box, "
                           "pixel size, offsets and estimated noise level) and orients "
                           "the particles; the loop then goes on as usual (the distance "
                           "model above is then not used). It is resampled to the "
                           "particles' pixel size and box; its hand does not matter. "
                           "Measured on simulated 5j0n particles: README, 'ab initio on "
                           "your particles'.")
        form.addParam("doCtf", params.BooleanParam, default=True, label="Use the CTF?",
                      help="Correct the CTF in the reconstructions, compare particles with "
                           "CTF-modulated projections in the refinement, and simulate the "
                           "fine-tuning particles with the particles' own CTFs (when the "
                           "particles carry CTFs).")

        form.addSection(label="Ab initio")
        form.addParam("numberOfParticles", params.IntParam, default=2000,
                      validators=[params.GE(0)], label="Particles in the loop",
                      help="Size of the random subset the iterations work on (0: all). "
                           "All particles are oriented at the end, in the frame of the "
                           "iteration kept, and refined against its map.")
        form.addParam("maxIterations", params.IntParam, default=3, validators=[params.GT(0)],
                      label="Maximum iterations",
                      help="Orientation rounds: the first from the starting offsets, each "
                           "further one from the offsets the previous round refined; the "
                           "third and later with the model retrained on the refined map "
                           "(or, for a model you give, fine-tuned on it at every round) "
                           "when chosen. It stops earlier when a round's half maps are "
                           "worse than the best so far (Resolution tolerance); the last "
                           "round that is not is kept. On adenylate kinase at SNR 1/16: "
                           "0.80, 0.71 and 0.52 rad after rounds 1, 2 and 3 (README).")
        form.addParam("startShifts", params.EnumParam, default=0, choices=START_SHIFTS,
                      label="Starting offsets",
                      help="centre of mass: estimated from each particle without a "
                           "reference (exact on clean data; skipped, with a line in the log, "
                           "when the estimated noise is above the signal, where it is only "
                           "noise: then the input offsets are the start). "
                           "input offsets: those the particles carry (e.g. from 2-D "
                           "classification or re-centring; 0 if none). zero: none. The "
                           "refinement then searches the offsets against the maps.")
        form.addParam("maxShift", params.FloatParam, default=4.0, validators=[params.GE(0)],
                      label="Offset range (px)",
                      help="Largest offset of a particle from its box centre, in pixels of "
                           "the particles: the centring's limit and the first refinement "
                           "search's half-width.")
        form.addParam("doRefine", params.BooleanParam, default=True,
                      label="Refine locally?",
                      help="After each orientation round, refine orientations and offsets "
                           "locally against each half's own map (gold standard, as 'refine' "
                           "does) until the half-map resolution stops improving; also "
                           "refine all the particles at the end. No: the maps come "
                           "straight from the recovered orientations and the starting "
                           "offsets (to measure what refinement brings).")
        form.addParam("refineIterations", params.IntParam, default=4,
                      validators=[params.GT(0)], condition="doRefine",
                      expertLevel=params.LEVEL_ADVANCED, label="Refinement iterations",
                      help="At most this many refinement iterations per round (fewer when "
                           "the resolution stops improving).")
        form.addParam("doRetrain", params.BooleanParam, default=True,
                      label="Retrain the model on the refined map?",
                      help="When the model was trained here on a map (an initial volume, "
                           "or the common-lines map when no model is given): after the "
                           "second round (which orients again from the refined offsets "
                           "with the same model), train a new model from scratch on the "
                           "refined map's projections simulated like the data (as on the "
                           "first map: Initial-volume training settings) before each "
                           "further round. Each costs as much as the first training (~13 "
                           "min for 2,000 projections at 64 px on 2 CPU cores) and took "
                           "adenylate kinase at SNR 1/16 from 0.71 to 0.52 rad (README, "
                           "'more rounds'). Fine-tuning is not done when the model is "
                           "retrained.")
        form.addParam("doFineTune", params.BooleanParam, default=False,
                      label="Fine-tune the model on the map?",
                      help="Self-training: after each round, simulate particles from the "
                           "current map like the data (their CTFs, box, pixel size, offsets "
                           "and the estimated noise level), continue training the model on "
                           "them, and orient the particles again; a round whose half maps "
                           "are worse is dropped. For a model you give (a model trained "
                           "here on a map is retrained instead, when chosen). Off by "
                           "default: measured on 5j0n at SNR 1/16 it did not help (README, "
                           "'ab initio on your particles'). Slow on a CPU.")
        form.addParam("fineTuneParticles", params.IntParam, default=2000,
                      validators=[params.GE(20)], condition="doFineTune",
                      label="Fine-tuning particles",
                      help="Particles simulated from the current map for each fine-tuning.")
        form.addParam("fineTuneEpochs", params.IntParam, default=3, validators=[params.GT(0)],
                      condition="doFineTune", label="Fine-tuning epochs",
                      help="Training epochs per fine-tuning (the best validation weights "
                           "are kept).")
        form.addParam("fineTuneLearningRate", params.FloatParam, default=1e-4,
                      validators=[params.GT(0)], condition="doFineTune",
                      expertLevel=params.LEVEL_ADVANCED, label="Fine-tuning learning rate",
                      help="Adam step size of the fine-tuning (small: the model already "
                           "knows views).")
        form.addParam("resolutionTolerance", params.FloatParam, default=0.02,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Resolution tolerance",
                      help="A round is kept, and the loop goes on, unless its half-map "
                           "resolution (FSC 0.143) is worse than the best so far by more "
                           "than this fraction (0.02 = 2%). Later rounds start from refined "
                           "offsets and maps; the half maps barely tell them apart (10.64, "
                           "10.50, 10.53 A for 0.80, 0.71, 0.52 rad on adenylate kinase at "
                           "SNR 1/16), so a tie goes to the later round.")
        form.addParam("volumeParticles", params.IntParam, default=2000,
                      validators=[params.GE(40)], expertLevel=params.LEVEL_ADVANCED,
                      label="Initial-volume training particles",
                      help="Projections of the initial volume simulated to train the model "
                           "on (when an initial volume is given).")
        form.addParam("volumeEpochs", params.IntParam, default=60, validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Initial-volume training epochs",
                      help="Training epochs of that model (the best validation weights are "
                           "kept). About 18 s each for 2,000 particles at 64 px on 2 CPU "
                           "cores. At SNR 1/16, 25 epochs left the model on its plateau "
                           "where 60 trained it (README, 'starting with no map').")
        form.addParam("volumeImageSize", params.IntParam, default=64,
                      validators=[params.GE(16)], expertLevel=params.LEVEL_ADVANCED,
                      label="Initial-volume model box (px)",
                      help="The particles are Fourier-downsampled to this box for that "
                           "model when their box is larger (training time grows with the "
                           "pixels).")
        form.addParam("commonLinesClasses", params.IntParam, default=200,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Class averages (no model, no map)",
                      help="With neither a distance model nor an initial volume (and no "
                           "shipped generalist), the first map is made from the particles "
                           "in the loop alone: ASPIRE classifies them into views "
                           "(rotationally invariant features, 10 particles per class), "
                           "averages this many classes, orients the averages by common "
                           "lines and the map is reconstructed from them, low-passed; a "
                           "distance model is then trained on it as on an initial volume. "
                           "Needs ASPIRE (pip install 'scipion-em-orientlearn[aspire]', or "
                           "the plugin variable ORIENTLEARN_ASPIRE_PYTHON). 0: refuse to "
                           "run without a model or a map.")
        form.addParam("nNeighbors", params.IntParam, default=32, validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Neighbours per particle",
                      help="Nearest neighbours in feature space linked to each particle in "
                           "the recovery graph.")
        form.addParam("nRandom", params.IntParam, default=16, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Random pairs per particle",
                      help="Random far pairs per particle in the recovery graph; they keep "
                           "the global shape.")
        form.addParam("nSteps", params.IntParam, default=1500, validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Recovery steps",
                      help="Maximum optimisation steps of each recovery (stops earlier on "
                           "convergence).")
        form.addParam("wienerConstant", params.FloatParam, default=0.1,
                      validators=[params.GT(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Wiener constant",
                      help="Regularisation of the reconstructions' CTF correction.")
        self._addSeedParam(form)
        self._addResourceParams(form)

    # -------------------------- INSERT steps functions ---------------------------
    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.abInitioStep, signature, needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS functions ----------------------------------
    def _modelPath(self):
        model = self.inputModel.get()
        return model.getFileName() if model is not None else shipped_generalist()

    def _settings(self):
        from ..core import abinitio
        return abinitio.AbInitioSettings(
            diameter_A=self.particleDiameter.get(), symmetry=self.symmetryGroup.get(),
            n_subset=self.numberOfParticles.get(), max_iterations=self.maxIterations.get(),
            resolution_tolerance=self.resolutionTolerance.get(),
            retrain=bool(self.doRetrain),
            start_shifts=START_SHIFT_KEYS[self.startShifts.get()],
            max_shift=self.maxShift.get(), refine=bool(self.doRefine),
            refine_iterations=self.refineIterations.get(), fine_tune=bool(self.doFineTune),
            fine_tune_particles=self.fineTuneParticles.get(),
            fine_tune_epochs=self.fineTuneEpochs.get(),
            fine_tune_learning_rate=self.fineTuneLearningRate.get(),
            n_neighbors=self.nNeighbors.get(), n_random=self.nRandom.get(),
            recovery_steps=self.nSteps.get(), wiener_constant=self.wienerConstant.get(),
            n_threads=self._threadCount(), seed=self.seed.get(),
            volume_particles=self.volumeParticles.get(),
            volume_epochs=self.volumeEpochs.get(),
            volume_image_size=self.volumeImageSize.get(),
            common_lines_classes=self.commonLinesClasses.get(),
            aspire_python=self._aspirePython())

    def _startsFromCommonLines(self):
        return (self.initialVolume.get() is None and self.inputModel.get() is None
                and shipped_generalist() is None)

    def _aspirePython(self):
        if not self._startsFromCommonLines():
            return None
        from .. import Plugin
        return Plugin.getAspirePython()[0]

    def abInitioStep(self, signature=None):
        self._configureDevices()
        from ..core import abinitio, model_io
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        ids, images = convert.read_particle_images(parts)
        self._checkImages(ids, images, "Input particles")
        ctf = convert.particle_ctfs(parts) if self.doCtf else None
        shifts = convert.particle_shifts(parts)
        initial = self.initialVolume.get()
        if initial is not None:
            start_map = convert.read_volume_on_grid(initial, images.shape[-1], px)
            model, meta, path = None, {}, f"trained on {initial.getFileName()}"
            self.info(f"Initial volume: {initial.getFileName()} "
                      f"({initial.getSamplingRate():.4g} A/px, resampled to {px:.4g} A/px, "
                      f"{images.shape[-1]} px); a distance model is trained on it.")
        elif self._startsFromCommonLines():
            start_map, model, meta = None, None, {}
            path = "trained on a map of class averages oriented by common lines (ASPIRE)"
        else:
            start_map, path = None, self._modelPath()
            model, meta = model_io.load_distance_model(path)
            meta.setdefault("image_size", model.input_shape[1])
            if self.inputModel.get() is not None:
                meta.setdefault("pixel_size", self.inputModel.get().getSamplingRate())
            self.info(f"Distance model: {path}")
        res = abinitio.run_ab_initio(images, px, model, meta, self._settings(), ctf=ctf,
                                     shifts=shifts, log=self.info,
                                     progress=self._progress("Ab initio", "items"),
                                     initial_volume=start_map,
                                     workdir=self._getTmpPath("common_lines"))
        for name, vol in (("volume.mrc", res.volume), ("half1.mrc", res.half_maps[0]),
                          ("half2.mrc", res.half_maps[1])):
            convert.write_volume(self._getExtraPath(name), vol, px)
        for k, vol in enumerate(res.iteration_volumes, start=1):
            convert.write_volume(self._getExtraPath(f"iteration_{k:02d}.mrc"), vol, px)
        if start_map is None and res.initial_volume is not None:
            convert.write_volume(self._getExtraPath(COMMON_LINES_MAP), res.initial_volume, px)
        if res.initial_volume is not None:
            retrained = res.best_iteration > 2 and self.doRetrain
            trained_on = (f"iteration {res.best_iteration - 1}'s refined map" if retrained
                          else path)
            model_io.save_distance_model(res.model, self._getExtraPath(MODEL_FILE),
                                         dict(res.model_meta, trained_on=trained_on))
        elif self.doFineTune and res.best_iteration > 1:
            model_io.save_distance_model(res.model, self._getExtraPath(MODEL_FILE),
                                         dict(meta, fine_tuned_from=path))
        np.savez(self._getExtraPath(RESULT_FILE), quaternions=res.quaternions,
                 shifts=res.shifts, halves=res.halves, frequencies=res.frequencies,
                 fsc=res.fsc, resolution=np.array(res.resolution),
                 resolution_05=np.array(res.resolution_05), subset=res.subset,
                 sigma2=np.array(res.sigma2), best_iteration=np.array(res.best_iteration),
                 seconds=np.array(res.seconds))
        with open(self._getExtraPath(HISTORY_FILE), "w") as f:
            json.dump(dict(model=path, pixel_size=px, best_iteration=res.best_iteration,
                           records=res.history), f, indent=1)
        self.info(f"Ab initio done in {res.seconds:.0f} s: half-map FSC0.143 "
                  f"{res.resolution:.2f} A, FSC0.5 {res.resolution_05:.2f} A (iteration kept: "
                  f"{res.best_iteration}). Hand {HAND_NOTE}.")

    def createOutputStep(self, signature=None):
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        res = self._loadArrays(RESULT_FILE)
        out = convert.copy_particles_with_orientations(
            self, parts, res["quaternions"], shifts=res["shifts"],
            extra={HALF_ATTR: res["halves"].astype(int) + 1})
        setattr(out, HAND_ATTR, String(HAND_NOTE))
        vol = Volume()
        vol.setFileName(self._getExtraPath("volume.mrc"))
        vol.setSamplingRate(px)
        vol.setHalfMaps([self._getExtraPath("half1.mrc"), self._getExtraPath("half2.mrc")])
        setattr(vol, HAND_ATTR, String(HAND_NOTE))
        vol.setObjComment(f"Hand {HAND_NOTE}.")
        fscs = self._createSetOfFSCs()
        f = FSC(objLabel="half maps (all particles)")
        f.setData(res["frequencies"].tolist(), np.nan_to_num(res["fsc"]).tolist())
        fscs.append(f)
        self._defineOutputs(outputVolume=vol, outputParticles=out, outputFSCs=fscs)
        self._defineSourceRelation(self.inputParticles, vol)
        self._defineTransformRelation(self.inputParticles, out)
        self._defineSourceRelation(self.inputParticles, fscs)

    # -------------------------- results ------------------------------------------
    def getHistory(self):
        """``{'model', 'pixel_size', 'best_iteration', 'records': [...]}`` or {}."""
        path = self._getExtraPath(HISTORY_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def getCommonLinesMap(self):
        """Path of the first map made by class averages + common lines, or None."""
        path = self._getExtraPath(COMMON_LINES_MAP)
        return path if os.path.exists(path) else None

    def getIterationVolumes(self):
        """Paths of the subset's map after each iteration (extra/iteration_NN.mrc)."""
        paths, k = [], 1
        while os.path.exists(self._getExtraPath(f"iteration_{k:02d}.mrc")):
            paths.append(self._getExtraPath(f"iteration_{k:02d}.mrc"))
            k += 1
        return paths

    # -------------------------- INFO functions -----------------------------------
    def _validate(self):
        parts = self.inputParticles.get()
        errors = self._validateNotRunning()
        errors += self._validateParticles(parts, "Input particles", minCount=40)
        errors += self._validateSymmetry(self.symmetryGroup.get())
        model = self.inputModel.get()
        initial = self.initialVolume.get()
        errors += self._validateVolume(initial, "Initial volume")
        if initial is not None:
            errors += self._validateInitialVolume(initial)
        elif model is None:
            if shipped_generalist() is None:
                errors += self._validateCommonLinesStart(parts)
        else:
            fn = model.getFileName()
            if not fn or not os.path.exists(fn):
                errors.append(f"The model file {fn} is missing: re-run or re-import the model.")
            elif not zipfile.is_zipfile(fn):
                errors.append(f"The model file {fn} is corrupt (not a Keras archive): re-run "
                              "or re-import the model.")
            errors += self._validatePixelSize(model.getSamplingRate(),
                                              "The model's sampling rate")
        d = self.particleDiameter.get()
        if d is None or d <= 0:
            errors.append("Particle diameter: give the particle's diameter in Angstrom "
                          "(a little larger than the protein's longest dimension).")
        elif parts is not None and parts.getSize() and parts.getSamplingRate():
            px, box = parts.getSamplingRate(), parts.getXDim()
            if d > box * px:
                errors.append(f"Particle diameter {d:.0f} A is larger than the box "
                              f"({box} px x {px:.3g} A = {box * px:.0f} A): give the "
                              "particle's diameter, or re-extract with a larger box.")
            elif d < 8 * px:
                errors.append(f"Particle diameter {d:.1f} A is under 8 pixels "
                              f"({px:.3g} A/px): give the diameter in Angstrom.")
            if self.maxShift.get() > box / 4:
                errors.append(f"Offset range {self.maxShift.get():g} px is over a quarter of "
                              f"the box ({box} px): re-centre or re-extract the particles.")
        if parts is not None and self.numberOfParticles.get() and \
                0 < self.numberOfParticles.get() < 40:
            errors.append(f"Particles in the loop: {self.numberOfParticles.get()} is too "
                          "few for two half maps; use at least 40 (or 0 for all).")
        return errors

    def _validateCommonLinesStart(self, parts):
        """No model, no map, no generalist: the first map comes from class averages and
        common lines, which need ASPIRE and enough particles."""
        if not self.commonLinesClasses.get():
            return ["Distance model: this installation ships no generalist model and "
                    "'Class averages' is 0, so a model or an initial volume is required: "
                    "give a coarse initial volume (e.g. RELION's or cryoSPARC's initial "
                    "model), or train a model ('train distance') or import one ('import "
                    "trained model')."]
        from .. import Plugin
        python, why = Plugin.getAspirePython()
        errors = []
        if python is None:
            errors.append("Without a distance model or an initial volume the first map is "
                          "made by class averages and common lines, which need ASPIRE. "
                          + why + " Or give a distance model or an initial volume.")
        if parts is not None and parts.getSize():
            from ..core.common_lines_map import CommonLinesSettings, min_particles
            n_loop = min(self.numberOfParticles.get() or parts.getSize(), parts.getSize())
            classes = self.commonLinesClasses.get()
            size = min(CommonLinesSettings.image_size, parts.getXDim() or 0)
            if n_loop < 2 * classes:
                errors.append(f"Class averages: {classes} averages of {n_loop} particles "
                              "in the loop leave under 2 particles per class; use more "
                              "particles or fewer averages.")
            elif n_loop < min_particles(classes, size):
                errors.append(f"Class averages: the 2-D classification of {size} px "
                              f"particles needs at least {min_particles(classes, size)} "
                              f"particles in the loop; there are {n_loop}.")
        return errors

    def _validateInitialVolume(self, volume):
        """The initial volume must hold the particle: its extent (A) at least the
        particle diameter. Another sampling or box is fine: it is resampled."""
        d = self.particleDiameter.get()
        dims = volume.getDim()
        px = volume.getSamplingRate()
        if not dims or not px or d is None or d <= 0:
            return []
        extent = min(dims) * px
        if extent < d:
            return [f"Initial volume: its box ({min(dims)} px x {px:.3g} A = {extent:.0f} A) "
                    f"is smaller than the particle diameter ({d:.0f} A): the protein would be "
                    "cut; give a map in a larger box."]
        return []

    def _warnings(self):
        parts = self.inputParticles.get()
        warnings = []
        if parts is not None and self.doCtf and not parts.hasCTF():
            warnings.append("The particles carry no CTF: the maps will not be CTF-corrected "
                            "and fine-tuning particles are simulated without a CTF.")
        if self.initialVolume.get() is not None and self.inputModel.get() is not None:
            warnings.append("Both a distance model and an initial volume are given: a new "
                            "model is trained on the initial volume and the distance model "
                            "is not used.")
        return warnings

    def _summary(self):
        hist = self.getHistory()
        if not hist or not hasattr(self, "outputVolume"):
            return ["Output not ready yet."]
        res = self._loadArrays(RESULT_FILE)
        lines = [f"Model: {hist['model']}."]
        for r in hist["records"]:
            move = r.get("median_rotation_change")
            lines.append(f"Iteration {r['iteration']} ({r['stage']}, {r['n_particles']} "
                         f"particles): half-map FSC0.143 {r['resolution']:.1f} A, FSC0.5 "
                         f"{r['resolution_05']:.1f} A"
                         + ("" if move is None else
                            f", orientations moved {np.degrees(move):.1f} deg (median)") + ".")
        lines.append(f"Iteration kept: {hist['best_iteration']}; final map from "
                     f"{len(res['quaternions'])} particles: {float(res['resolution']):.1f} A "
                     f"at FSC 0.143 (half maps, gold standard).")
        lines.append(f"Hand of the map: {HAND_NOTE}.")
        return lines

    def _methods(self):
        hist = self.getHistory()
        if not hist:
            return []
        res = self._loadArrays(RESULT_FILE)
        text = (f"An initial map was determined ab initio from "
                f"{self.inputParticles.get().getSize()} particles with orientlearn: "
                "orientations were recovered from distances estimated by a Siamese network "
                "[Banjac2021]")
        if self.initialVolume.get() is not None:
            text += (" trained on projections of a coarse initial volume simulated like the "
                     "particles")
        elif self._startsFromCommonLines():
            text += (" trained on projections, simulated like the particles, of a first map "
                     "reconstructed from 2-D class averages oriented by common lines "
                     "(ASPIRE [Zhao2014, Shkolnisky2012])")
        if self.doRefine:
            text += (", then refined locally with the offsets against two independent half "
                     "maps (gold standard [Henderson2012])")
        retrained = self.doRetrain and (self.initialVolume.get() is not None
                                        or self._startsFromCommonLines())
        if retrained and self.maxIterations.get() > 2:
            text += (", the network being retrained on projections of the refined map "
                     "between iterations")
        elif self.doFineTune:
            text += (", the network being fine-tuned on projections of the current map "
                     "between iterations")
        return [text + f". Final half-map resolution {float(res['resolution']):.1f} A (FSC "
                "0.143); the hand of the map was not determined."]

    def _citations(self):
        cites = ["Banjac2021"]
        if self._startsFromCommonLines():
            cites += ["Zhao2014", "Shkolnisky2012"]
        if self.doRefine:
            cites += ["Henderson2012", "Rosenthal2003"]
        return cites
