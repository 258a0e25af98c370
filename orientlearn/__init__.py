"""orientlearn: ab initio particle orientations by learning (Banjac et al. 2021).

A Siamese network, trained on simulated projections, estimates the angle between the
orientations of two particle images; the orientations are then recovered by making their
pairwise angles match the estimated ones. The numerics live in ``orientlearn.core`` (no
Scipion import); this package is the Scipion plugin around them.
"""
import os

from .scipion_env import setup_scipion_environment

# A plain pip install has no Scipion launcher to set these: fill in what is missing
# before pyworkflow reads its configuration.
setup_scipion_environment()

import pwem  # noqa: E402

from .constants import ORIENTLEARN_GPU, DEMO_MAP  # noqa: E402

# Python of an environment with ASPIRE (same name as core.peer_aspire.ASPIRE_PYTHON_VAR;
# not imported from there so that `python -m orientlearn.core.peer_aspire` runs cleanly).
ORIENTLEARN_ASPIRE_PYTHON = "ORIENTLEARN_ASPIRE_PYTHON"

__version__ = "0.1.0"
_logo = None
_references = ["Banjac2021"]


class Plugin(pwem.Plugin):
    """Scipion plugin for orientlearn. Pure Python: nothing to compile or download."""
    _url = "https://arxiv.org/abs/2104.06237"
    _processingField = ["SPA"]

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(ORIENTLEARN_GPU, "",
                       description="GPU ids TensorFlow may use (e.g. '0,1'); empty: "
                                   "whatever TensorFlow sees, the CPU when there is none.")
        cls._defineVar(ORIENTLEARN_ASPIRE_PYTHON, "",
                       description="Python of an environment with ASPIRE, for the 'common "
                                   "lines (ASPIRE)' protocol. Empty: this environment when "
                                   "aspire is installed here, else the venv made by "
                                   "'python -m orientlearn.core.peer_aspire create' "
                                   "(~/.cache/orientlearn/aspire-venv).")

    @classmethod
    def getAspirePython(cls):
        """``(python, message)``: the interpreter that runs ASPIRE, or ``(None, why)``
        with the exact commands that make one (``core.peer_aspire.find_aspire_python``)."""
        from .core.peer_aspire import find_aspire_python
        # The environment wins, so a value changed after start-up (tests, scripts) counts.
        value = os.environ.get(ORIENTLEARN_ASPIRE_PYTHON,
                               cls.getVar(ORIENTLEARN_ASPIRE_PYTHON, ""))
        return find_aspire_python(value)

    @classmethod
    def getEnviron(cls):
        import pyworkflow.utils as pwutils
        return pwutils.Environ(os.environ)

    @classmethod
    def defineBinaries(cls, env):
        # Everything is installed by pip with the package.
        pass

    @classmethod
    def validateInstallation(cls):
        try:
            import tensorflow  # noqa: F401
        except ImportError as e:
            return ["orientlearn needs TensorFlow: pip install scipion-em-orientlearn "
                    f"(import failed: {e})"]
        return []

    @classmethod
    def getDemoMap(cls):
        """Path of the bundled 5j0n density map (public PDB data, 3.667 A/voxel)."""
        return os.path.join(os.path.dirname(__file__), "data", DEMO_MAP)
