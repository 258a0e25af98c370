"""The Scipion plugin class of orientlearn (``orientlearn.Plugin``, built on first access).

Kept out of ``orientlearn/__init__.py`` so that importing the package imports no Scipion.
"""
import os

import pwem

from .constants import DEMO_MAP, ORIENTLEARN_ASPIRE_PYTHON, ORIENTLEARN_GPU


class Plugin(pwem.Plugin):
    """Scipion plugin for orientlearn. Pure Python: nothing to compile or download."""
    # pyworkflow names the plugin and finds its folder (templates, protocols.conf) from
    # the class's module: it is the package's, where Scipion finds it (orientlearn.Plugin).
    __module__ = "orientlearn"
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
