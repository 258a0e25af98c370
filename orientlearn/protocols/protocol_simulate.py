"""Protocol ``simulate``: particle images with known orientations, eq. (1) of the paper."""
import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.objects import Acquisition, SetOfParticles, Volume
from pwem.protocols import ProtParticles
from pyworkflow.constants import PROD

from .. import convert
from ..constants import (
    NOISE_NONE,
    NOISE_SIGMA2,
    NOISE_SNR,
    ORIENT_SYMMETRY,
    ORIENT_UNIFORM,
    SIM_FROM_ATOMSTRUCT,
    SIM_FROM_FILES,
    SIM_FROM_VOLUME,
)
from ..core import geometry
from .protocol_base import OrientLearnProtBase


class OrientLearnProtSimulate(OrientLearnProtBase, ProtParticles):
    """Simulate cryo-EM particle images of a volume: p = C S_t P_theta x + n.

    The volume is a density map, or is computed from atomic models (an AtomStruct, or
    PDB/mmCIF files: one or many proteins) with gemmi's electron scattering factors at the
    chosen pixel size.

    Orientations are drawn uniformly on SO(3) (or in the asymmetric unit of a point
    group), the volume is projected (Fourier-slice on the CPU, ASTRA on a GPU), optionally
    downsampled, multiplied by a CTF, shifted by a sub-pixel offset and corrupted by
    Gaussian noise. The particles carry their true orientations and shifts as Scipion
    alignment (ALIGN_PROJ) and their CTF, so any Scipion tool can use them as ground truth.
    """
    _label = "simulate"
    _devStatus = PROD
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolume": Volume}

    # -------------------------- DEFINE param functions -------------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputSource", params.EnumParam, default=SIM_FROM_VOLUME,
                      choices=["volume", "atomic structure", "atomic model files"],
                      display=params.EnumParam.DISPLAY_HLIST, label="Simulate from",
                      help="A density map, an atomic structure imported in Scipion, or "
                           "PDB/mmCIF files (one or many proteins). Atomic models become "
                           "density maps with gemmi (electron scattering factors), centred "
                           "on their centre of mass, at the pixel size given below.")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume",
                      condition="inputSource == %d" % SIM_FROM_VOLUME,
                      important=True, label="Input volume",
                      help="Density map to project. Any box (it is padded to a cube); "
                           "its sampling rate sets the particles' pixel size.")
        form.addParam("inputStructure", params.PointerParam,
                      pointerClass="AtomStruct,SetOfAtomStructs",
                      condition="inputSource == %d" % SIM_FROM_ATOMSTRUCT,
                      important=True, label="Atomic structure(s)",
                      help="An atomic structure (PDB/mmCIF), or a set of them: each one is "
                           "turned into a density map and projected.")
        form.addParam("atomFiles", params.PathParam,
                      condition="inputSource == %d" % SIM_FROM_FILES,
                      label="Atomic model files",
                      help="A PDB/mmCIF file (.pdb, .cif, .ent, gzipped too), a folder "
                           "holding such files, or several paths separated by spaces. Each "
                           "model gets its own density map and its own particles.")
        form.addParam("atomPixelSize", params.FloatParam, default=2.0,
                      condition="inputSource != %d" % SIM_FROM_VOLUME,
                      validators=[params.GT(0)], label="Pixel size (A/px)",
                      help="Pixel size of the density maps computed from the atoms (and of "
                           "the particles when the image size is 0 or the map's box).")
        form.addParam("atomResolution", params.FloatParam, default=0.0,
                      condition="inputSource != %d" % SIM_FROM_VOLUME,
                      expertLevel=params.LEVEL_ADVANCED, label="Map resolution (A)",
                      help="Low-pass of the maps computed from atoms (soft edge at this "
                           "resolution). 0: Nyquist (2 x pixel size).")
        form.addParam("atomBFactor", params.FloatParam, default=0.0,
                      condition="inputSource != %d" % SIM_FROM_VOLUME,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Extra B-factor (A^2)",
                      help="Added to every atom's B-factor: blurs the map like a "
                           "temperature factor (amplitude exp(-B s^2/4)).")
        form.addParam("atomBox", params.IntParam, default=0,
                      condition="inputSource != %d" % SIM_FROM_VOLUME,
                      validators=[params.GE(0)], label="Map box (px)",
                      help="Box of the maps computed from atoms. 0: the smallest even box "
                           "holding the largest model (with a small margin).")
        form.addParam("numberOfParticles", params.IntParam, default=5000,
                      validators=[params.GT(0)], label="Number of particles",
                      help="How many projections to simulate (the paper used 5,000); with "
                           "several atomic models, how many per model.")
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
        self._addResourceParams(form)

    # -------------------------- INSERT steps functions -------------------------
    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.simulateStep, signature, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

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

    def _fromAtoms(self):
        return self.inputSource.get() != SIM_FROM_VOLUME

    def _atomicModelFiles(self):
        """The atomic model files to simulate (list of paths)."""
        from ..core import atoms
        if self.inputSource.get() == SIM_FROM_ATOMSTRUCT:
            obj = self.inputStructure.get()
            items = obj if hasattr(obj, "iterItems") else [obj]
            return [convert.clean_path(item.getFileName()) for item in items]
        return atoms.atomic_model_files(str(self.atomFiles.get() or "").split())

    def _atomMaps(self):
        """Density maps of the atomic models, written to extra/maps/: list of
        ``(path, volume, pixel_size)``, all in the same box."""
        from ..core import atoms
        files = self._atomicModelFiles()
        pixel_size = self.atomPixelSize.get()
        resolution = self.atomResolution.get() or None
        structures = [atoms.read_structure(f) for f in files]
        box = self.atomBox.get() or None
        if box is None:  # one box for all: the one the largest model needs
            box = max(atoms.structure_to_map(st, pixel_size, resolution=resolution).volume.shape[0]
                      for st in structures)
        os.makedirs(self._getExtraPath("maps"), exist_ok=True)
        maps = []
        for k, (f, st) in enumerate(zip(files, structures)):
            m = atoms.structure_to_map(st, pixel_size, box=box, resolution=resolution,
                                       b_factor=self.atomBFactor.get(), source=f)
            name = os.path.basename(f).split(".")[0]
            path = self._getExtraPath("maps", f"{k:03d}_{name}.mrc")
            convert.write_volume(path, m.volume, pixel_size)
            self.info(f"Map {k + 1}/{len(files)}: {f} ({m.n_atoms} atoms, "
                      f"{2 * m.radius_A:.0f} A across) -> {box}^3 at {pixel_size:g} A/px")
            maps.append((path, m.volume, pixel_size))
        return maps

    def _inputMaps(self):
        """List of ``(path, volume (N, N, N), voxel_size)`` to project."""
        from ..core import volumes
        if self._fromAtoms():
            return self._atomMaps()
        vol_obj = self.inputVolume.get()
        path = convert.clean_path(vol_obj.getFileName())
        volume, _ = volumes.read_volume(path)
        return [(path, volume, vol_obj.getSamplingRate())]

    def simulateStep(self, signature=None):
        from ..core import simulation
        self._configureDevices()
        maps = self._inputMaps()
        box = maps[0][1].shape[0]
        size = self.imageSize.get() or box
        symmetry = self.symmetryGroup.get() if self.orientationMode == ORIENT_SYMMETRY else "C1"
        n = self.numberOfParticles.get()
        pixel_size = maps[0][2] * box / size
        results = []
        for k, (path, volume, voxel_size) in enumerate(maps):
            self.info(f"Simulating {n} particles of {size} px from the {box}^3 map {path} "
                      f"(symmetry {symmetry}, seed {self.seed.get()}).")
            seed = self.seed.get() if len(maps) == 1 else int(
                np.random.SeedSequence([self.seed.get(), k]).generate_state(1)[0])
            sim = simulation.simulate_particles(
                volume, n, image_size=size, symmetry=symmetry, max_shift=self.maxShift.get(),
                ctf=self._ctfArgs(), voxel_size=voxel_size, seed=seed,
                oversampling=self.oversampling.get(),
                progress=self._progress("Projections", "images"), **self._noiseArgs())
            self._checkFinite(sim["images"], "Simulated images")
            results.append(sim)
        images = np.concatenate([r["images"] for r in results])
        clean = np.concatenate([r["clean"] for r in results])
        convert.write_stack(self._getExtraPath("particles.mrcs"), images, pixel_size)
        convert.write_stack(self._getExtraPath("particles_clean.mrcs"), clean, pixel_size)
        arrays = dict(quaternions=np.concatenate([r["quaternions"] for r in results]),
                      shifts=np.concatenate([r["shifts"] for r in results]),
                      pixel_size=np.array(pixel_size),
                      map_index=np.repeat(np.arange(len(maps)), n),
                      map_files=np.array([m[0] for m in maps]))
        if results[0].get("ctf") is not None:
            for key in results[0]["ctf"]:
                arrays[f"ctf_{key}"] = np.concatenate(
                    [np.broadcast_to(np.asarray(r["ctf"][key]), (n,)) for r in results])
        self._saveArrays("ground_truth.npz", **arrays)

    def createOutputStep(self, signature=None):
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
        if self._fromAtoms():
            source = self.inputStructure if self.inputSource == SIM_FROM_ATOMSTRUCT else None
            maps = [str(f) for f in truth["map_files"]]
            if len(maps) == 1:  # the one map the particles are projections of
                vol = Volume(location=maps[0])
                vol.setSamplingRate(self.atomPixelSize.get())
                self._defineOutputs(outputVolume=vol)
                if source is not None:
                    self._defineSourceRelation(source, vol)
            if source is not None:
                self._defineSourceRelation(source, parts)
        else:
            self._defineSourceRelation(self.inputVolume, parts)

    def _requiredOutputs(self):
        return ["outputParticles"]        # outputVolume only from one atomic model

    # -------------------------- INFO functions ---------------------------------
    def _validateAtoms(self):
        if self.inputSource.get() == SIM_FROM_ATOMSTRUCT and self.inputStructure.get() is None:
            return ["Atomic structure(s): not set."]
        try:
            files = self._atomicModelFiles()
        except ValueError as e:
            return [f"Atomic model files: {e}"]
        errors = [f"The atomic model file {f} does not exist." for f in files
                  if not os.path.isfile(f)]
        errors += self._validatePixelSize(self.atomPixelSize.get(), "Map pixel size")
        resolution = self.atomResolution.get()
        if resolution and resolution < 2 * self.atomPixelSize.get():
            errors.append(f"Map resolution {resolution:g} A is finer than Nyquist "
                          f"({2 * self.atomPixelSize.get():g} A): use 0 or a larger value.")
        if self.atomBox.get() and self.atomBox.get() < 8:
            errors.append("Map box: use at least 8 px, or 0 for the smallest box.")
        if self.imageSize.get() and self.atomBox.get() and not (
                8 <= self.imageSize.get() <= self.atomBox.get()):
            errors.append(f"Image size must be between 8 and the map box "
                          f"({self.atomBox.get()} px), or 0 to keep the box.")
        if self.imageSize.get() and self.imageSize.get() < 8:
            errors.append("Image size must be at least 8 px, or 0 to keep the map's box.")
        return errors

    def _validate(self):
        errors = self._validateNotRunning()
        if self._fromAtoms():
            return errors + self._validateCommon() + self._validateAtoms()
        vol = self.inputVolume.get()
        if vol is None:
            return errors + ["Input volume: not set."]
        errors += self._validateVolume(vol, "Input volume")
        box = max(vol.getDim() or (0, 0, 0))
        if self.imageSize.get() and not 8 <= self.imageSize.get() <= box:
            errors.append(f"Image size must be between 8 and the volume's box ({box} px), "
                          f"or 0 to keep the box.")
        return errors + self._validateCommon()

    def _validateCommon(self):
        errors = []
        if self.orientationMode == ORIENT_SYMMETRY:
            errors += self._validateSymmetry(self.symmetryGroup.get())
        if self.oversampling.get() is None or self.oversampling.get() < 1:
            errors.append(f"Projector oversampling must be 1 or more (it is "
                          f"{self.oversampling.get()}): 2 is accurate, 1 faster.")
        if self.numberOfParticles.get() is None or self.numberOfParticles.get() < 1:
            errors.append("Number of particles must be at least 1.")
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
        if self._fromAtoms():
            lines.append(f"From atomic models: {parts.getSize() // self.numberOfParticles.get()} "
                         f"map(s) at {self.atomPixelSize.get():g} A/px (gemmi, electron "
                         f"scattering factors), {self.numberOfParticles.get()} particles each.")
        return lines

    def _methods(self):
        if not hasattr(self, "outputParticles"):
            return []
        source = ("density maps computed from atomic models with gemmi [Wojdyr2022]"
                  if self._fromAtoms() else self.getObjectTag("inputVolume"))
        where = ("on SO(3)" if self.orientationMode == ORIENT_UNIFORM
                 else "in the asymmetric unit of " + self.symmetryGroup.get())
        return [f"We simulated {self.numberOfParticles.get()} projections of "
                f"{source} with orientations drawn uniformly "
                f"{where}"
                f", following the imaging model of [Banjac2021]."]

    def _citations(self):
        return ["Banjac2021"] + (["Wojdyr2022"] if self._fromAtoms() else [])
