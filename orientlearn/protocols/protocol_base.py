"""What every orientlearn protocol shares: logging progress, seeds, GPU choice, checks."""
import json
import os

import numpy as np

import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..constants import DEFAULT_THREADS, ORIENTLEARN_GPU
from ..core import resources
from ..core.progress import ProgressReporter


class OrientLearnProtBase(EMProtocol):
    """Base of the orientlearn protocols (not shown in the protocol tree)."""
    _label = None
    _usesTensorFlow = False   # True: steps run TensorFlow in the protocol's process

    # -------------------------- form helpers -----------------------------------
    @staticmethod
    def _addSeedParam(form, default=0):
        form.addParam("seed", params.IntParam, default=default, expertLevel=params.LEVEL_ADVANCED,
                      label="Random seed",
                      help="Seed of every random draw of this protocol: the same seed and "
                           "inputs give the same result.")

    @staticmethod
    def _addGpuParams(form):
        from .. import Plugin
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label="Use GPU when available",
                       help="TensorFlow (and ASTRA) use the GPU when one is visible; "
                            "on a machine without one everything runs on the CPU.")
        form.addHidden(params.GPU_LIST, params.StringParam,
                       default=Plugin.getVar(ORIENTLEARN_GPU, "") or "0",
                       label="GPU ids",
                       help="Comma-separated ids of the GPUs to use (CUDA_VISIBLE_DEVICES "
                            "of the steps). Default: the plugin variable ORIENTLEARN_GPU, "
                            "else 0.")

    @classmethod
    def _addResourceParams(cls, form, threads=DEFAULT_THREADS, gpu=True):
        """GPU choice (hidden, shown by Scipion in the run header) and the parallel
        section: TensorFlow, numpy and orientlearn's pools are kept to 'Threads'."""
        if gpu:
            cls._addGpuParams(form)
        form.addParallelSection(threads=threads, mpi=0)

    # -------------------------- runtime helpers --------------------------------
    def _progress(self, label, unit="items", interval=10.0):
        """A ``progress(done, total)`` callable that writes rate and ETA to the log."""
        return ProgressReporter(log=self.info, label=label, unit=unit, interval=interval)

    def _threadCount(self):
        """Threads granted to this run: the parallel section's value (at least 1); None
        when the protocol has no parallel section."""
        if not self.allowThreads:   # Protocol sets numberOfThreads = 1 on every protocol
            return None
        return max(1, int(self.numberOfThreads.get() or 1))

    def _configureDevices(self):
        """Keep this process (and the programs it starts) to the granted threads and GPUs.

        Threads: ``core.resources.limit_threads`` (BLAS/OpenMP, TensorFlow, our pools).
        GPUs: CUDA_VISIBLE_DEVICES = the GPU list, or empty when 'Use GPU' is off.
        Protocols whose steps run TensorFlow in this process (``_usesTensorFlow``) import
        it first so that its thread pools are fixed before it starts. Called before every
        step (``_stepStarted``) and idempotent; returns the thread report."""
        if self.getAttributeValue(params.USE_GPU, True) is False:
            resources.limit_gpus([])
        elif hasattr(self, params.GPU_LIST) and self.getAttributeValue(params.GPU_LIST, ""):
            resources.limit_gpus(self.getGpuList())
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        threads = self._threadCount()
        if threads is None:
            return resources.thread_report()
        if self._usesTensorFlow:
            try:
                import tensorflow  # noqa: F401  (fix its pools before it starts)
            except ImportError:
                pass
        return resources.limit_threads(threads)

    def _runOrientlearn(self, command, args):
        """Run ``orientlearn <command> <args>`` (the core's command line) in the plugin's
        own environment through ``runJob`` (threads, GPUs and log as Scipion does it).

        Returns False, running nothing, when that environment is not installed: the
        caller then computes in this process. ``args``: a string or a list of strings."""
        from .. import Plugin
        if not Plugin.usesOwnEnvironment():
            return False
        if not isinstance(args, str):
            args = " ".join(str(a) for a in args)
        self._configureDevices()
        self.runJob(Plugin.getProgram(), f"{command} {args}", env=Plugin.getEnviron(),
                    numberOfMpi=1)
        return True

    def _stepStarted(self, step):
        super()._stepStarted(step)
        report = self._configureDevices()
        self.info(f"Resources: threads {json.dumps(report, sort_keys=True)}, "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")

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
