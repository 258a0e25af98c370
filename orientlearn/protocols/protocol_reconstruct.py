"""Protocol ``reconstruct``: a volume from particles and their orientations, with FSC."""
import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import FSC, SetOfFSCs, Volume
from pwem.protocols import ProtReconstruct3D
from pyworkflow.constants import PROD

from .. import convert
from ..constants import RECONSTRUCT_ASTRA, RECONSTRUCT_FOURIER
from ..core import geometry
from .protocol_base import OrientLearnProtBase

FSC_FILE = "fsc.npz"


class OrientLearnProtReconstruct(OrientLearnProtBase, ProtReconstruct3D):
    """Reconstruct a density map from oriented particles and measure its resolution.

    CPU: direct Fourier inversion (each image's 2-D Fourier transform inserted as a
    central slice of an oversampled 3-D grid with gridding weights), with Wiener-like CTF
    correction from each particle's CTF and its shift undone. GPU: ASTRA's CGLS (as in
    the paper) when CUDA is available. The particles are split at random in two halves
    for the half-map FSC; with a reference map, the FSC against it is computed too (the
    reference must be in the particles' frame: use the 'compare' protocol's aligned
    particles for recovered orientations).
    """
    _label = "reconstruct"
    _devStatus = PROD
    _possibleOutputs = {"outputVolume": Volume, "outputFSCs": SetOfFSCs}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj",
                      important=True, label="Particles with orientations",
                      help="Particles carrying 3-D orientations (ALIGN_PROJ), from "
                           "'recover orientations', 'compare' or any refinement.")
        form.addParam("method", params.EnumParam, default=RECONSTRUCT_FOURIER,
                      choices=["Fourier inversion (CPU)", "ASTRA CGLS (GPU)"],
                      display=params.EnumParam.DISPLAY_HLIST, label="Method",
                      help="Fourier inversion runs anywhere, is fast and corrects the CTF. "
                           "ASTRA's CGLS needs a CUDA GPU (without one the protocol refuses "
                           "to start) and does not correct the CTF.")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      label="Symmetry group", help=geometry.SYMMETRY_HELP)
        form.addParam("iterations", params.IntParam, default=50,
                      condition="method == %d" % RECONSTRUCT_ASTRA,
                      label="CGLS iterations", help="Iterations of ASTRA's CGLS3D_CUDA.")
        form.addParam("doCtfCorrection", params.BooleanParam, default=True,
                      condition="method == %d" % RECONSTRUCT_FOURIER,
                      label="Correct the CTF?",
                      help="Wiener-like correction with each particle's CTF (when the "
                           "particles carry one).")
        form.addParam("wienerConstant", params.FloatParam, default=0.1,
                      condition="method == %d" % RECONSTRUCT_FOURIER,
                      expertLevel=params.LEVEL_ADVANCED, label="Wiener constant",
                      help="Regularisation added to sum(CTF^2) in the division; larger "
                           "is smoother.")
        form.addParam("maskRadius", params.FloatParam, default=-1,
                      label="Mask radius (px)",
                      help="Soft spherical mask applied to the maps; -1: none.")
        form.addParam("referenceVolume", params.PointerParam, pointerClass="Volume",
                      allowsNull=True, label="Reference volume (optional)",
                      help="A map in the same frame as the particles' orientations for "
                           "an FSC against it (e.g. the simulation's input map). It is "
                           "resampled to the particles' pixel size and box; its "
                           "handedness is checked both ways.")
        self._addSeedParam(form)
        self._addResourceParams(form)

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.reconstructStep, signature,
                                 needsGPU=self.method == RECONSTRUCT_ASTRA)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    # -------------------------- STEPS -------------------------------------------
    def _maskRadius(self):
        return self.maskRadius.get() if self.maskRadius.get() > 0 else None

    def reconstructStep(self, signature=None):
        from ..core import fsc, pipeline
        self._configureDevices()
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        fourier = self.method == RECONSTRUCT_FOURIER
        source = convert.particle_source(parts, orientations=True,
                                         ctf=fourier and bool(self.doCtfCorrection))
        self.info(f"Reconstructing from {source}.")
        if fourier:
            maps = pipeline.reconstruct_halves(
                source, symmetry=self.symmetryGroup.get(),
                wiener_constant=self.wienerConstant.get(), mask_radius=self._maskRadius(),
                seed=self.seed.get(), progress=self._progress("Half maps", "images"))
            full, half1, half2 = maps.full, maps.half1, maps.half2
        else:
            full, half1, half2 = self._astraMaps(source)
        from ..core.checks import check_map
        for vol, what in ((full, "The reconstructed map"), (half1, "Half map 1"),
                          (half2, "Half map 2")):
            check_map(vol, what)        # never register a blank or NaN map
        freq, fsc_half = fsc.fsc(half1, half2, pixel_size=px)
        arrays = dict(freq=freq, fsc_half=fsc_half, pixel_size=np.array(px))
        ref = self._readReference(source.image_size, px)
        if ref is not None:
            check_map(ref, f"The reference map on the particles' grid ({source.image_size} px at "
                           f"{px:.3f} A/px)")
            freq_r, fsc_ref, flipped = fsc.fsc_with_handedness(full, ref, pixel_size=px)
            arrays.update(fsc_ref=fsc_ref, ref_flipped=np.array(bool(flipped)))
            self.info("FSC vs reference" + (" (after flipping handedness)" if flipped else ""))
        for key, label in (("fsc_half", "Half-map FSC"), ("fsc_ref", "FSC vs reference")):
            if key in arrays:
                try:                    # an FSC without a resolution is an error
                    r5 = fsc.resolution_at(freq, arrays[key], 0.5)
                    r143 = fsc.resolution_at(freq, arrays[key], 0.143)
                except ValueError as e:
                    raise ValueError(f"{label}: {e}") from e
                self.info(f"{key}: FSC0.5 {r5:.2f} A, FSC0.143 {r143:.2f} A")
        for name, vol in (("volume.mrc", full), ("half1.mrc", half1), ("half2.mrc", half2)):
            convert.write_volume(self._getExtraPath(name), vol, px)
        np.savez(self._getExtraPath(FSC_FILE), **arrays)

    def _astraMaps(self, source):
        """ASTRA CGLS (GPU) of all particles and of each half (``pipeline.half_split``),
        with the symmetry and the mask; no CTF correction (not in the form for this
        method). The images are held in memory."""
        from ..core import pipeline, reconstruction
        images = source.images()
        pipeline.check_images(images)
        R = geometry.quaternion_to_matrix(source.quaternions)
        half = pipeline.half_split(len(source), self.seed.get())
        mask = self._maskRadius()

        def run(sel):
            vol = reconstruction.reconstruct_astra(images[sel], R[sel], shifts=source.shifts[sel],
                                                   symmetry=self.symmetryGroup.get(),
                                                   iterations=self.iterations.get())
            if mask is not None:
                vol = vol * reconstruction.soft_spherical_mask(vol.shape[0], mask)
            return vol

        return (run(np.arange(len(images))), run(np.flatnonzero(half == 0)),
                run(np.flatnonzero(half == 1)))

    def _readReference(self, size, px):
        ref_obj = self.referenceVolume.get()
        if ref_obj is None:
            return None
        return convert.read_volume_on_grid(ref_obj, size, px)

    def createOutputStep(self, signature=None):
        parts = self.inputParticles.get()
        px = parts.getSamplingRate()
        vol = Volume()
        vol.setFileName(self._getExtraPath("volume.mrc"))
        vol.setSamplingRate(px)
        vol.setHalfMaps([self._getExtraPath("half1.mrc"), self._getExtraPath("half2.mrc")])
        data = self._loadArrays(FSC_FILE)
        fscs = self._createSetOfFSCs()
        for key, label in (("fsc_half", "half maps"), ("fsc_ref", "vs reference")):
            if key in data:
                f = FSC(objLabel=label)
                f.setData(data["freq"].tolist(), np.nan_to_num(data[key]).tolist())
                fscs.append(f)
        self._defineOutputs(outputVolume=vol, outputFSCs=fscs)
        self._defineSourceRelation(self.inputParticles, vol)
        self._defineSourceRelation(self.inputParticles, fscs)

    def getResolutions(self):
        """{'fsc_half': (FSC0.5 A, FSC0.143 A), 'fsc_ref': (...)} from the saved curves."""
        import os

        from ..core import fsc
        path = self._getExtraPath(FSC_FILE)
        if not os.path.exists(path):
            return {}
        data = self._loadArrays(FSC_FILE)
        out = {}
        for k in ("fsc_half", "fsc_ref"):
            if k in data:
                try:
                    out[k] = (fsc.resolution_at(data["freq"], data[k], 0.5),
                              fsc.resolution_at(data["freq"], data[k], 0.143))
                except ValueError:      # a curve saved before FSCs were checked
                    out[k] = (float("nan"), float("nan"))
        return out

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        parts = self.inputParticles.get()
        errors = self._validateNotRunning()
        errors += self._validateParticles(parts, "Input particles", needOrientations=True,
                                          minCount=2)
        errors += self._validateSymmetry(self.symmetryGroup.get())
        errors += self._validateVolume(self.referenceVolume.get(), "Reference volume")
        if self.method == RECONSTRUCT_ASTRA:
            from ..core.projection import has_cuda
            if not has_cuda():
                errors.append("ASTRA CGLS needs a CUDA GPU and none is available: choose "
                              "Fourier inversion.")
        if parts is not None and parts.getSize():
            rates = {round(p.getSamplingRate() or parts.getSamplingRate(), 4)
                     for p in parts.iterItems(limit=200)}
            if len(rates) > 1:
                errors.append(f"Particles have mixed sampling rates {sorted(rates)}: "
                              "resample them to one pixel size first.")
        return errors

    def _summary(self):
        res = self.getResolutions()
        if not res:
            return ["Output not ready yet."]
        lines = []
        for key, label in (("fsc_half", "Half-map FSC"), ("fsc_ref", "FSC vs reference")):
            if key in res:
                lines.append(f"{label}: {res[key][0]:.2f} A at 0.5, {res[key][1]:.2f} A at 0.143.")
        return lines

    def _methods(self):
        if not hasattr(self, "outputVolume"):
            return []
        how = "direct Fourier inversion" if self.method == RECONSTRUCT_FOURIER else "ASTRA CGLS"
        return [f"A map was reconstructed by {how} from {self.inputParticles.get().getSize()} "
                "particles; resolution by the FSC of two half maps."]

    def _citations(self):
        return ["Banjac2021"] + (["vanAarle2016"] if self.method == RECONSTRUCT_ASTRA else [])
