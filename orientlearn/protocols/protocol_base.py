"""What every orientlearn protocol shares: logging progress, seeds, GPU choice, checks."""
import os

import numpy as np

import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..core.progress import ProgressReporter


class OrientLearnProtBase(EMProtocol):
    """Base of the orientlearn protocols (not shown in the protocol tree)."""
    _label = None

    # -------------------------- form helpers -----------------------------------
    @staticmethod
    def _addSeedParam(form, default=0):
        form.addParam("seed", params.IntParam, default=default, expertLevel=params.LEVEL_ADVANCED,
                      label="Random seed",
                      help="Seed of every random draw of this protocol: the same seed and "
                           "inputs give the same result.")

    @staticmethod
    def _addGpuParams(form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label="Use GPU when available",
                       help="TensorFlow (and ASTRA) use the GPU when one is visible; "
                            "on a machine without one everything runs on the CPU.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0",
                       label="GPU ids",
                       help="Comma-separated ids of the GPUs to use (CUDA_VISIBLE_DEVICES).")

    # -------------------------- runtime helpers --------------------------------
    def _progress(self, label, unit="items", interval=10.0):
        """A ``progress(done, total)`` callable that writes rate and ETA to the log."""
        return ProgressReporter(log=self.info, label=label, unit=unit, interval=interval)

    def _configureDevices(self):
        """Restrict TensorFlow to the chosen GPUs (or to the CPU) before it starts."""
        if hasattr(self, params.USE_GPU) and not self.getAttributeValue(params.USE_GPU, True):
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        elif hasattr(self, params.GPU_LIST):
            gpus = self.getAttributeValue(params.GPU_LIST, "")
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g).strip() for g in str(gpus).split())
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def _saveArrays(self, name, **arrays):
        path = self._getExtraPath(name)
        np.savez(path, **arrays)
        return path

    def _loadArrays(self, name):
        with np.load(self._getExtraPath(name), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    # -------------------------- validation helpers -----------------------------
    @staticmethod
    def _validateParticles(particles, label="Input particles", needOrientations=False,
                           minCount=1):
        """Common checks of a SetOfParticles; returns a list of error strings."""
        errors = []
        if particles is None:
            return [f"{label}: not set."]
        n = particles.getSize()
        if n < minCount:
            errors.append(f"{label} has {n} particle(s); at least {minCount} are needed.")
        if n:
            x, y, _ = particles.getDim() or (0, 0, 0)
            if x != y:
                errors.append(f"{label} are {x}x{y} pixels: images must be square. "
                              "Crop or re-extract them with a square box.")
            if not particles.getSamplingRate() or particles.getSamplingRate() <= 0:
                errors.append(f"{label} have no sampling rate: set it on import.")
            if needOrientations:
                from ..convert import has_projection_alignment
                if not has_projection_alignment(particles):
                    errors.append(f"{label} carry no 3-D orientations (ALIGN_PROJ): use "
                                  "particles from 'simulate' or from a 3-D refinement.")
        return errors

    @staticmethod
    def _checkFinite(array, what):
        if not np.all(np.isfinite(array)):
            bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
            raise ValueError(f"{what} contain NaN or infinite values ({bad} affected): "
                             "fix or remove those particles first.")
