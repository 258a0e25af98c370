"""Protocol ``refine``: local refinement of orientations and offsets, gold standard."""
import json
import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import FSC, SetOfFSCs, SetOfParticles, Volume
from pwem.protocols import ProtRefine3D
from pyworkflow.constants import PROD

from .. import convert
from ..core import geometry
from .protocol_base import OrientLearnProtBase

RESULT_FILE = "refined.npz"
HISTORY_FILE = "refinement_history.json"
SCORE_ATTR = "_orientlearn_refine_score"
HALF_ATTR = "_orientlearn_half"
START_SHIFTS = ["input offsets", "centre of mass (reference-free)", "zero"]
START_SHIFT_KEYS = ["input", "centre of mass", "zero"]


class OrientLearnProtRefine(OrientLearnProtBase, ProtRefine3D):
    """Refine each particle's orientation and offset locally, and the map with them.

    Gold standard: the particles are split at random into two halves, each refined
    only against its own half map, so the half-map FSC is an honest resolution. Each
    iteration reprojects the half maps (weighted by the FSC's figure of merit and
    band-limited at the current resolution), searches every particle's offset and a
    small neighbourhood of its orientation coarse to fine by CTF-aware correlation in
    Fourier space, reconstructs the half maps from the new orientations and offsets,
    and raises the band limit with the resolution; it stops when the resolution stops
    improving. Use it after 'recover orientations' (or any ab initio method): recovered
    orientations are close enough to start from, and refinement also estimates the
    offsets that recovery does not. Hand the output particles to RELION / cryoSPARC 3-D
    refinement for the final map.
    """
    _label = "refine"
    _devStatus = PROD
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolume": Volume,
                        "outputFSCs": SetOfFSCs}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj", important=True,
                      label="Particles with orientations",
                      help="Particles carrying 3-D orientations (ALIGN_PROJ), e.g. from "
                           "'recover orientations'. Their offsets are the starting ones "
                           "(see 'Starting offsets'); their CTFs are used when present.")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume",
                      allowsNull=True, label="Starting map (optional)",
                      help="A map in the particles' frame to refine against, low-passed "
                           "to the starting resolution below. Empty: the two half maps "
                           "are reconstructed from the particles as they are. It is "
                           "resampled to the particles' pixel size and box.")
        form.addParam("initialResolution", params.FloatParam, default=30.0,
                      validators=[params.GT(0)], label="Starting resolution (A)",
                      help="Low-pass of the starting map and band limit of the first "
                           "iteration when a starting map is given (ignored otherwise: "
                           "the half maps' FSC sets it).")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      label="Symmetry group", help=geometry.SYMMETRY_HELP)
        form.addParam("maskDiameter", params.FloatParam, default=-1,
                      label="Mask diameter (A)",
                      help="Diameter of the soft circular mask on the particles and the "
                           "spherical mask on the maps, a little larger than the "
                           "particle (as in RELION). -1: the box minus 8 pixels.")
        form.addParam("doCtf", params.BooleanParam, default=True,
                      label="Use the CTF?",
                      help="Compare particles with CTF-modulated projections and correct "
                           "the CTF in the reconstructions (when the particles carry "
                           "CTFs).")
        form.addSection(label="Refinement")
        form.addParam("startShifts", params.EnumParam, default=0, choices=START_SHIFTS,
                      label="Starting offsets",
                      help="input offsets: those the particles carry (e.g. from "
                           "re-centring or 2-D classification; 0 if none). centre of "
                           "mass: estimated from each particle without a reference "
                           "(exact on clean data; at low SNR the CTF leaves too little "
                           "low-frequency signal for it to help). zero: ignore them. The "
                           "offsets are then searched against the maps in every case.")
        form.addParam("maxShift", params.FloatParam, default=5.0, validators=[params.GE(0)],
                      label="Offset search range (px)",
                      help="Half-width of the first iteration's offset search around the "
                           "starting offsets (later iterations search +-1.5 px around the "
                           "current ones, so offsets can still travel).")
        form.addParam("maxIterations", params.IntParam, default=10, validators=[params.GT(0)],
                      label="Maximum iterations",
                      help="Refinement stops earlier when the half-map resolution stops "
                           "improving.")
        form.addParam("minIterations", params.IntParam, default=3, validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Minimum iterations",
                      help="Iterations done before the stopping test applies.")
        form.addParam("levels", params.IntParam, default=3, validators=[params.GT(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Search levels",
                      help="Coarse-to-fine levels of the orientation search per iteration "
                           "(27 orientations each, the step halving at each level).")
        form.addParam("stepFactor", params.FloatParam, default=1.0,
                      validators=[params.GT(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Angular step factor",
                      help="Coarsest angular step = factor / band limit (radians; band "
                           "limit in Fourier pixels): the step shrinks as the resolution "
                           "improves.")
        form.addParam("fscThreshold", params.FloatParam, default=0.143,
                      expertLevel=params.LEVEL_ADVANCED, label="FSC threshold",
                      help="The band limit is where the half-map FSC drops below this, "
                           "plus 2 shells.")
        form.addParam("wienerConstant", params.FloatParam, default=0.1,
                      expertLevel=params.LEVEL_ADVANCED, label="Wiener constant",
                      help="Regularisation of the reconstructions' CTF correction.")
        self._addSeedParam(form)
        self._addResourceParams(form, gpu=False)

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.refineStep, signature, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS -------------------------------------------
    def _maskRadiusPx(self, parts):
        d = self.maskDiameter.get()
        return None if d is None or d <= 0 else d / 2.0 / parts.getSamplingRate()

    def refineStep(self, signature=None):
        from ..core import refinement
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        ids, images = convert.read_particle_images(parts)
        self._checkImages(ids, images, "Input particles")
        _, quats, shifts = convert.particle_orientations(parts)
        ctf = convert.particle_ctfs(parts) if self.doCtf else None
        start_map = None
        if self.inputVolume.get() is not None:
            start_map = convert.read_volume_on_grid(self.inputVolume.get(), images.shape[-1], px)
            self._checkFinite(start_map, "Starting map")
        mask_radius = self._maskRadiusPx(parts)
        settings = refinement.RefinementSettings(
            symmetry=self.symmetryGroup.get(), mask_radius=mask_radius,
            max_iterations=self.maxIterations.get(), min_iterations=self.minIterations.get(),
            shift_range=self.maxShift.get(), step_factor=self.stepFactor.get(),
            levels=self.levels.get(), fsc_threshold=self.fscThreshold.get(),
            initial_resolution=self.initialResolution.get(),
            wiener_constant=self.wienerConstant.get(), n_threads=self._threadCount(),
            seed=self.seed.get())
        diameter = 2.0 * (mask_radius or (images.shape[-1] / 2.0 - 4.0))
        res = refinement.refine_particles(
            images, px, quats, shifts=shifts, ctf=ctf, initial_map=start_map,
            settings=settings, start_shifts=START_SHIFT_KEYS[self.startShifts.get()],
            diameter=diameter, log=self.info,
            progress=self._progress("Refinement", "particles"))
        for name, vol in (("volume.mrc", res.volume), ("half1.mrc", res.half_maps[0]),
                          ("half2.mrc", res.half_maps[1])):
            convert.write_volume(self._getExtraPath(name), vol, px)
        np.savez(self._getExtraPath(RESULT_FILE), quaternions=res.quaternions,
                 shifts=res.shifts, scores=res.scores, halves=res.halves,
                 frequencies=res.frequencies, fsc=res.fsc,
                 resolution=np.array(res.resolution), resolution_05=np.array(res.resolution_05),
                 seconds=np.array(res.seconds))
        with open(self._getExtraPath(HISTORY_FILE), "w") as f:
            json.dump(res.history, f, indent=1)
        self.info(f"Refined {len(images)} particles in {res.seconds:.1f} s, "
                  f"{len(res.history)} iterations: half-map FSC0.143 {res.resolution:.2f} A, "
                  f"FSC0.5 {res.resolution_05:.2f} A.")

    def createOutputStep(self, signature=None):
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        res = self._loadArrays(RESULT_FILE)
        out = convert.copy_particles_with_orientations(
            self, parts, res["quaternions"], shifts=res["shifts"],
            extra={SCORE_ATTR: res["scores"], HALF_ATTR: res["halves"].astype(int) + 1})
        vol = Volume()
        vol.setFileName(self._getExtraPath("volume.mrc"))
        vol.setSamplingRate(px)
        vol.setHalfMaps([self._getExtraPath("half1.mrc"), self._getExtraPath("half2.mrc")])
        fscs = self._createSetOfFSCs()
        f = FSC(objLabel="half maps (gold standard)")
        f.setData(res["frequencies"].tolist(), np.nan_to_num(res["fsc"]).tolist())
        fscs.append(f)
        self._defineOutputs(outputParticles=out, outputVolume=vol, outputFSCs=fscs)
        self._defineTransformRelation(self.inputParticles, out)
        self._defineSourceRelation(self.inputParticles, vol)
        self._defineSourceRelation(self.inputParticles, fscs)
        if self.inputVolume.get() is not None:
            self._defineSourceRelation(self.inputVolume, vol)

    # -------------------------- results ------------------------------------------
    def getHistory(self):
        """Per-iteration records (resolution, band, step, changes, seconds), or []."""
        path = self._getExtraPath(HISTORY_FILE)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return json.load(f)

    def getResults(self):
        """{'resolution': FSC0.143 A, 'resolution_05': A, 'median_score', 'seconds'} or {}."""
        if not os.path.exists(self._getExtraPath(RESULT_FILE)):
            return {}
        res = self._loadArrays(RESULT_FILE)
        return dict(resolution=float(res["resolution"]),
                    resolution_05=float(res["resolution_05"]),
                    median_score=float(np.median(res["scores"])),
                    seconds=float(res["seconds"]))

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        parts = self.inputParticles.get()
        errors = self._validateNotRunning()
        errors += self._validateParticles(parts, "Input particles", needOrientations=True,
                                          minCount=10)
        errors += self._validateSymmetry(self.symmetryGroup.get())
        if self.minIterations.get() > self.maxIterations.get():
            errors.append(f"Minimum iterations ({self.minIterations.get()}) is larger than "
                          f"the maximum ({self.maxIterations.get()}).")
        if parts is not None and parts.getSize() and parts.getSamplingRate():
            box = parts.getXDim()
            box_A = box * parts.getSamplingRate()
            d = self.maskDiameter.get()
            if d is not None and d > box_A:
                errors.append(f"Mask diameter {d:.0f} A is larger than the box "
                              f"({box_A:.0f} A): give at most the box, or -1.")
            if d is not None and 0 < d < 8 * parts.getSamplingRate():
                errors.append(f"Mask diameter {d:.1f} A is under 8 pixels: give the "
                              "particle's diameter in Angstrom.")
            if self.maxShift.get() > box / 4:
                errors.append(f"Offset search range {self.maxShift.get():g} px is over a "
                              f"quarter of the box ({box} px): re-centre or re-extract the "
                              "particles first.")
        errors += self._validateVolume(self.inputVolume.get(), "Starting map")
        return errors

    def _summary(self):
        r = self.getResults()
        if not r:
            return ["Output not ready yet."]
        hist = self.getHistory()
        return [f"{self.inputParticles.get().getSize()} particles refined in "
                f"{len(hist)} iterations ({r['seconds']:.0f} s).",
                f"Half-map FSC (gold standard): {r['resolution_05']:.2f} A at 0.5, "
                f"{r['resolution']:.2f} A at 0.143.",
                f"Median particle score (normalised correlation): {r['median_score']:.3f}.",
                "Handedness cannot be determined from projections: check it on the map."]

    def _methods(self):
        r = self.getResults()
        if not r:
            return []
        return [f"Orientations and offsets of {self.inputParticles.get().getSize()} "
                "particles were refined locally against two independently refined half "
                "maps (gold standard [Henderson2012]), by CTF-aware Fourier-space "
                "correlation with projections weighted by the FSC figure of merit "
                f"[Rosenthal2003], as in RELION's auto-refine [Scheres2012]; final "
                f"half-map resolution {r['resolution']:.2f} A (FSC 0.143)."]

    def _citations(self):
        return ["Henderson2012", "Rosenthal2003", "Scheres2012"]
