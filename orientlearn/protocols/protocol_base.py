"""What every orientlearn protocol shares: logging progress, seeds, GPU choice, checks,
step signatures (a changed parameter re-runs the steps on *continue*) and a run lock."""
import json
import os
import shlex
import socket
import time

import numpy as np
import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..constants import DEFAULT_THREADS, ORIENTLEARN_GPU
from ..core import resources
from ..core.progress import ProgressReporter

#: Read every image in ``_validate`` (constant / NaN / huge values, named by id) when the
#: set holds at most this many pixel values (1e8: 400 MB of float32, streamed; ~3 s of
#: checks on 2 busy cores, plus the reading); larger sets are checked by the step.
VALIDATE_IMAGES_MAX_VALUES = 1e8

#: Form parameters that do not change a result: changing them never re-runs a step.
NON_RESULT_PARAMS = frozenset({"runName", "runMode", "useGpu", "gpuList", "hostName",
                               "numberOfThreads", "numberOfMpi", "comment"})

#: The run lock in ``extra/``: held (flock) by the process running the protocol's steps.
RUN_LOCK_FILE = "run.lock"


def _pointer_signature(pointer):
    """What identifies a pointed input: its object id, extension, size and file."""
    obj = pointer.get()
    if obj is None:
        return None
    sig = {"id": obj.getObjId(), "ext": pointer.getExtended() or ""}
    if hasattr(obj, "getSize"):
        sig["size"] = obj.getSize()
    if hasattr(obj, "getFileName") and obj.getFileName():
        sig["file"] = obj.getFileName()
    return sig


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

    # -------------------------- steps ------------------------------------------
    def _stepSignature(self):
        """Every form value that can change a result, with the identity of each input,
        as a JSON-able dict. Passed as the argument of every step: Scipion compares a
        step's arguments on *continue* and re-runs it (and, because all steps get the
        same signature, every step after it) when a parameter or an input changed."""
        from pyworkflow.object import Pointer, PointerList
        sig = {}
        for name, attr in self.iterDefinitionAttributes():
            if name in NON_RESULT_PARAMS:
                continue
            if isinstance(attr, PointerList):
                sig[name] = [_pointer_signature(p) for p in attr]
            elif isinstance(attr, Pointer):
                sig[name] = _pointer_signature(attr)
            else:
                value = attr.get()
                sig[name] = value if value is None or isinstance(value, (bool, int, float, str)) \
                    else str(value)
        return sig

    def _requiredOutputs(self):
        """Outputs a finished run must have (default: all of ``_possibleOutputs``)."""
        return list(getattr(self, "_possibleOutputs", {}) or {})

    def _runSteps(self, doneSteps):
        """Scipion's step loop, then: a run never ends "finished" without its outputs
        (e.g. every step was already done but the outputs were lost)."""
        super()._runSteps(doneSteps)
        if self.isFinished():
            missing = [n for n in self._requiredOutputs() if not self.hasAttribute(n)]
            if missing:
                self.setFailed(f"The run ended without its output(s) {', '.join(missing)} "
                               "(its steps were recorded as done): use *restart* to run it "
                               "again from the start.")
                self._store(self.status)

    # -------------------------- run lock ---------------------------------------
    def _runLockPath(self):
        return self._getExtraPath(RUN_LOCK_FILE)

    def _acquireRunLock(self):
        """Hold ``extra/run.lock`` for the life of this process (released by the kernel
        when it ends, also on kill -9); raise ``RuntimeError`` naming the other process
        if another run of this protocol holds it."""
        import fcntl
        path = self._runLockPath()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RuntimeError(self._lockMessage(self._runLockHolder() or {}))
        fh.seek(0)
        fh.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}, fh)
        fh.flush()
        self._runLock = fh
        self._runLockInode = os.fstat(fh.fileno()).st_ino

    def _runLockHolder(self):
        """``{pid, host, since}`` of the process running this protocol now, or None."""
        import fcntl
        path = self._runLockPath()
        if getattr(self, "_runLock", None) is not None or not os.path.exists(path):
            return None
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                try:
                    return json.loads(fh.read() or "{}")
                except ValueError:
                    return {}
            fcntl.flock(fh, fcntl.LOCK_UN)
        return None

    def _lockMessage(self, holder):
        who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('since', '?')}")
        return (f"Another run of this protocol is still working in {self._getPath()} ({who}): "
                "two runs would overwrite each other's files. Wait for it to end, or stop "
                "that process, then continue.")

    def _checkRunLockOwned(self):
        """Raise if this run's lock file was removed or replaced (the folder was cleaned
        by a *restart* while this process was still working): stop without outputs."""
        if getattr(self, "_runLock", None) is None:
            return
        try:
            same = os.stat(self._runLockPath()).st_ino == self._runLockInode
        except OSError:
            same = False
        if not same:
            raise RuntimeError(f"{self._getPath()} was cleaned while this run was still "
                               "working (another run was started): stopping this one "
                               "without outputs.")

    def _validateNotRunning(self):
        holder = self._runLockHolder()
        return [self._lockMessage(holder)] if holder is not None else []

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
            args = " ".join(shlex.quote(str(a)) for a in args)
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
                           minCount=1, checkImages=True):
        """Common checks of a SetOfParticles; returns a list of error strings.

        Size, square box, pixel size in the physical range, image files present,
        orientations if needed and, for sets up to ``VALIDATE_IMAGES_MAX_VALUES`` pixel
        values, every image read: constant, non-finite or huge images, named by id.
        """
        from .. import convert
        from ..core import checks
        errors = []
        if particles is None:
            return [f"{label}: not set."]
        n = particles.getSize()
        if n < minCount:
            errors.append(f"{label} has {n} particle(s); at least {minCount} are needed.")
        if not n:
            return errors
        x, y, _ = particles.getDim() or (0, 0, 0)
        if x != y:
            errors.append(f"{label} are {x}x{y} pixels: images must be square. "
                          "Crop or re-extract them with a square box.")
        message = checks.check_pixel_size(particles.getSamplingRate(),
                                          f"{label}: the sampling rate")
        if message:
            errors.append(message)
        if needOrientations and not convert.has_projection_alignment(particles):
            errors.append(f"{label} carry no 3-D orientations (ALIGN_PROJ): use "
                          "particles from 'simulate' or from a 3-D refinement.")
        missing = convert.missing_particle_files(particles)
        if missing:
            errors.append(f"{label}: {len(missing)} image file(s) no longer exist "
                          f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): "
                          "restore them or re-import the particles.")
        elif checkImages and x == y and n * x * y <= VALIDATE_IMAGES_MAX_VALUES:
            try:
                ids, defects = convert.particle_image_defects(particles)
                errors += checks.describe_image_defects(ids, defects, label)
            except Exception as e:  # unreadable stack: say so, never crash _validate
                errors.append(f"{label}: cannot read the images ({e}).")
        return errors

    @staticmethod
    def _validateSymmetry(name, label="Symmetry group"):
        """[] or [message] for a point-group name (never raises)."""
        from ..core import geometry
        try:
            geometry.symmetry_group(name)
        except Exception as e:
            return [f"{label}: {e}"]
        return []

    @staticmethod
    def _validateVolume(volume, label):
        """Checks of an optional Volume input: file present, pixel size physical."""
        if volume is None:
            return []
        from .. import convert
        from ..core import checks
        path = convert.clean_path(volume.getFileName() or "")
        if not path or not os.path.exists(path):
            return [f"{label}: the file {path or '(none)'} does not exist."]
        message = checks.check_pixel_size(volume.getSamplingRate(),
                                          f"{label}: the sampling rate")
        return [message] if message else []

    @staticmethod
    def _validatePixelSize(value, what):
        from ..core import checks
        message = checks.check_pixel_size(value, what)
        return [message] if message else []

    @staticmethod
    def _checkImages(ids, images, label="Input images"):
        """Raise ``ValueError`` naming the particle ids of constant, non-finite or huge
        images (the run-time twin of ``_validateParticles``' image checks)."""
        from ..core import checks
        messages = checks.describe_image_defects(ids, checks.image_defects(images), label)
        if messages:
            raise ValueError(" ".join(messages))

    @staticmethod
    def _checkFinite(array, what):
        if not np.all(np.isfinite(array)):
            bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
            raise ValueError(f"{what} contain NaN or infinite values ({bad} affected): "
                             "fix or remove those items first.")
