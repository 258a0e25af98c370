"""Protocol ``simulate``: particle images with known orientations, eq. (1) of the paper."""
import os

import numpy as np

import pyworkflow.protocol.params as params
from pyworkflow.constants import PROD
from pwem.objects import Acquisition, SetOfParticles

from .. import convert
from ..constants import NOISE_NONE, NOISE_SIGMA2, NOISE_SNR, ORIENT_UNIFORM, ORIENT_SYMMETRY
from ..core import geometry
from .protocol_base import OrientLearnProtBase


class OrientLearnProtSimulate(OrientLearnProtBase):
    """Simulate cryo-EM particle images of a volume: p = C S_t P_theta x + n.

    Orientations are drawn uniformly on SO(3) (or in the asymmetric unit of a point
    group), the volume is projected (Fourier-slice on the CPU, ASTRA on a GPU), optionally
    downsampled, multiplied by a CTF, shifted by a sub-pixel offset and corrupted by
    Gaussian noise. The particles carry their true orientations and shifts as Scipion
    alignment (ALIGN_PROJ) and their CTF, so any Scipion tool can use them as ground truth.
    """
    _label = "simulate"
    _devStatus = PROD
    _possibleOutputs = {"outputParticles": SetOfParticles}

    # -------------------------- DEFINE param functions -------------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume",
                      important=True, label="Input volume",
                      help="Density map to project. Any box (it is padded to a cube); "
                           "its sampling rate sets the particles' pixel size.")
        form.addParam("numberOfParticles", params.IntParam, default=5000,
                      validators=[params.GT(0)], label="Number of particles",
                      help="How many projections to simulate (the paper used 5,000).")
        form.addParam("orientationMode", params.EnumParam, default=ORIENT_UNIFORM,
                      choices=["uniform on SO(3)", "asymmetric unit of a point group"],
                      display=params.EnumParam.DISPLAY_HLIST, label="Orientations",
                      help="Uniform: Haar-random rotations. Asymmetric unit: the same, "
                           "mapped into one asymmetric unit of the symmetry group so that "
                           "no two particles show symmetry-equivalent views.")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      condition="orientationMode == %d" % ORIENT_SYMMETRY,
                      label="Symmetry group", help=geometry.SYMMETRY_HELP)
        form.addParam("imageSize", params.IntParam, default=0,
                      label="Image size (px)",
                      help="Box of the output particles. 0 keeps the volume's (cubic) box; "
                           "a smaller value downsamples by Fourier cropping and scales the "
                           "pixel size accordingly.")

        form.addSection(label="Shifts and CTF")
        form.addParam("maxShift", params.FloatParam, default=0.0,
                      validators=[params.GE(0)], label="Maximum shift (px)",
                      help="Each particle is offset from the box centre by t, each "
                           "component from a triangular distribution on [-max, max] "
                           "pixels (of the output images). Sub-pixel, no wrap-around.")
        form.addParam("doCtf", params.BooleanParam, default=False,
                      label="Apply a CTF?",
                      help="Multiply each projection by a contrast transfer function with "
                           "its own random defocus (stored on the particle).")
        form.addParam("defocusMin", params.FloatParam, default=10000.0,
                      condition="doCtf", label="Minimum defocus (A)",
                      help="Defocus U is drawn uniformly between the minimum and maximum.")
        form.addParam("defocusMax", params.FloatParam, default=30000.0,
                      condition="doCtf", label="Maximum defocus (A)",
                      help="Upper bound of the defocus range.")
        form.addParam("astigmatism", params.FloatParam, default=500.0,
                      condition="doCtf", expertLevel=params.LEVEL_ADVANCED,
                      label="Astigmatism (A)",
                      help="Maximum |defocus U - defocus V|; the astigmatism angle is "
                           "uniform.")
        form.addParam("voltage", params.FloatParam, default=300.0, label="Voltage (kV)",
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Acceleration voltage (CTF and acquisition).")
        form.addParam("sphericalAberration", params.FloatParam, default=2.7,
                      expertLevel=params.LEVEL_ADVANCED, label="Spherical aberration (mm)",
                      help="Cs of the objective lens.")
        form.addParam("amplitudeContrast", params.FloatParam, default=0.1,
                      expertLevel=params.LEVEL_ADVANCED, label="Amplitude contrast",
                      help="Fraction of amplitude contrast, 0 to 1.")

        form.addSection(label="Noise")
        form.addParam("noiseMode", params.EnumParam, default=NOISE_SIGMA2,
                      choices=["none", "variance (sigma^2)", "SNR (dB)"],
                      display=params.EnumParam.DISPLAY_HLIST, label="Noise",
                      help="Additive white Gaussian noise. Clean projections are first "
                           "scaled to unit variance on average, so sigma^2 = 16 is the "
                           "paper's noisy setting (SNR = -12 dB).")
        form.addParam("sigma2", params.FloatParam, default=16.0,
                      condition="noiseMode == %d" % NOISE_SIGMA2,
                      validators=[params.GE(0)], label="Noise variance sigma^2",
                      help="Variance of the noise, relative to unit-variance clean images.")
        form.addParam("snrDb", params.FloatParam, default=-12.0,
                      condition="noiseMode == %d" % NOISE_SNR, label="SNR (dB)",
                      help="Signal-to-noise ratio 10 log10(var(signal)/sigma^2).")
        self._addSeedParam(form)
        form.addParam("oversampling", params.IntParam, default=2,
                      expertLevel=params.LEVEL_ADVANCED, label="Projector oversampling",
                      help="Zero-padding factor of the Fourier-slice projector (2 is "
                           "accurate; 1 is faster and blurrier).")
        self._addGpuParams(form)

    # -------------------------- INSERT steps functions -------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.simulateStep, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    # -------------------------- STEPS functions --------------------------------
    def _noiseArgs(self):
        mode = self.noiseMode.get()
        if mode == NOISE_SIGMA2:
            return dict(sigma2=self.sigma2.get())
        if mode == NOISE_SNR:
            return dict(snr_db=self.snrDb.get())
        return {}

    def _ctfArgs(self):
        if not self.doCtf:
            return None
        return dict(defocus_range=(self.defocusMin.get(), self.defocusMax.get()),
                    astigmatism=(0.0, self.astigmatism.get()), voltage=self.voltage.get(),
                    cs=self.sphericalAberration.get(),
                    amplitude_contrast=self.amplitudeContrast.get())

    def simulateStep(self):
        from ..core import imaging
        self._configureDevices()
        vol_obj = self.inputVolume.get()
        volume, _ = imaging.read_volume(convert.clean_path(vol_obj.getFileName()))
        box = volume.shape[0]
        size = self.imageSize.get() or box
        symmetry = self.symmetryGroup.get() if self.orientationMode == ORIENT_SYMMETRY else "C1"
        n = self.numberOfParticles.get()
        self.info(f"Simulating {n} particles of {size} px from a {box}^3 volume "
                  f"(symmetry {symmetry}, seed {self.seed.get()}).")
        pixel_size = vol_obj.getSamplingRate() * box / size
        sim = imaging.simulate_particles(
            volume, n, image_size=size, symmetry=symmetry, max_shift=self.maxShift.get(),
            ctf=self._ctfArgs(), voxel_size=vol_obj.getSamplingRate(), seed=self.seed.get(),
            oversampling=self.oversampling.get(),
            progress=self._progress("Projections", "images"), **self._noiseArgs())
        self._checkFinite(sim["images"], "Simulated images")
        convert.write_stack(self._getExtraPath("particles.mrcs"), sim["images"], pixel_size)
        convert.write_stack(self._getExtraPath("particles_clean.mrcs"), sim["clean"], pixel_size)
        arrays = dict(quaternions=sim["quaternions"], shifts=sim["shifts"],
                      pixel_size=np.array(pixel_size))
        if sim.get("ctf") is not None:
            arrays.update({f"ctf_{k}": np.asarray(v) for k, v in sim["ctf"].items()})
        self._saveArrays("ground_truth.npz", **arrays)

    def createOutputStep(self):
        truth = self._loadArrays("ground_truth.npz")
        ctf = None
        if "ctf_defocus_u" in truth:
            ctf = {k[4:]: truth[k] for k in truth if k.startswith("ctf_")}
        acq = Acquisition(voltage=self.voltage.get(),
                          sphericalAberration=self.sphericalAberration.get(),
                          amplitudeContrast=self.amplitudeContrast.get(), magnification=60000)
        parts = convert.make_particle_set(
            self, self._getExtraPath("particles.mrcs"), float(truth["pixel_size"]), acq,
            quaternions=truth["quaternions"], shifts=truth["shifts"], ctf=ctf)
        self._defineOutputs(outputParticles=parts)
        self._defineSourceRelation(self.inputVolume, parts)

    # -------------------------- INFO functions ---------------------------------
    def _validate(self):
        errors = []
        vol = self.inputVolume.get()
        if vol is None:
            return ["Input volume: not set."]
        path = convert.clean_path(vol.getFileName() or "")
        if not os.path.exists(path):
            errors.append(f"The volume file {path} does not exist.")
        if not vol.getSamplingRate() or vol.getSamplingRate() <= 0:
            errors.append("The input volume has no sampling rate: set it on import.")
        box = max(vol.getDim() or (0, 0, 0))
        if self.imageSize.get() and not 8 <= self.imageSize.get() <= box:
            errors.append(f"Image size must be between 8 and the volume's box ({box} px), "
                          f"or 0 to keep the box.")
        if self.orientationMode == ORIENT_SYMMETRY:
            try:
                geometry.symmetry_group(self.symmetryGroup.get())
            except ValueError as e:
                errors.append(str(e))
        if self.doCtf and not 0 < self.defocusMin.get() <= self.defocusMax.get():
            errors.append("Defocus range: need 0 < minimum <= maximum (Angstrom).")
        if not 0 <= self.amplitudeContrast.get() <= 1:
            errors.append("Amplitude contrast must be between 0 and 1.")
        return errors

    def _summary(self):
        if not hasattr(self, "outputParticles"):
            return ["Output not ready yet."]
        parts = self.outputParticles
        lines = [f"{parts.getSize()} particles of {parts.getXDim()} px at "
                 f"{parts.getSamplingRate():.3f} A/px."]
        mode = self.noiseMode.get()
        lines.append("Noise: " + ("none" if mode == NOISE_NONE else
                                  f"sigma^2 = {self.sigma2.get()}" if mode == NOISE_SIGMA2
                                  else f"SNR = {self.snrDb.get()} dB"))
        if self.doCtf:
            lines.append(f"CTF: defocus {self.defocusMin.get():.0f}-{self.defocusMax.get():.0f} A.")
        if self.maxShift.get():
            lines.append(f"Shifts up to {self.maxShift.get()} px (triangular).")
        return lines

    def _methods(self):
        if not hasattr(self, "outputParticles"):
            return []
        return [f"We simulated {self.numberOfParticles.get()} projections of "
                f"{self.getObjectTag('inputVolume')} with orientations drawn uniformly "
                f"{'on SO(3)' if self.orientationMode == ORIENT_UNIFORM else 'in the asymmetric unit of ' + self.symmetryGroup.get()}"
                f", following the imaging model of [Banjac2021]."]

    def _citations(self):
        return ["Banjac2021"]
