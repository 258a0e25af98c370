"""The Scipion plugin class of orientlearn (``orientlearn.Plugin``, built on first access).

Kept out of ``orientlearn/__init__.py`` so that importing the package imports no Scipion.

Where the numerics run. A plain install (``pip install scipion-em-orientlearn``, or
``scipion3 installp``) puts the CPU build of TensorFlow into Scipion's Python and the
protocols compute in their own process. ``scipion3 installb orientlearn`` (the plugin
manager's *binaries*) adds an environment of the plugin's own, in the cryoDRGN pattern:
a virtual environment under ``software/em/orientlearn-<version>/env`` holding TensorFlow
with CUDA, ASTRA and the ``orientlearn`` command line of the core; protocols then run
their heavy steps there through ``runJob`` (``OrientLearnProtBase._runOrientlearn``), and
Scipion's Python is left alone. ``validateInstallation`` only checks paths.
"""
import importlib.util
import os
import sys

import pwem

from . import __version__
from .constants import DEMO_MAP, ORIENTLEARN_ASPIRE_PYTHON, ORIENTLEARN_GPU, ORIENTLEARN_HOME

ENV_FOLDER = "env"           # the virtual environment inside ORIENTLEARN_HOME
ENV_FLAG = "orientlearn_env_installed"
# What the plugin's environment holds besides orientlearn itself (installed --no-deps,
# so that no Scipion package lands there).
ENV_REQUIREMENTS = ["tensorflow[and-cuda]>=2.18,<2.19", "numpy>=1.26,<2", "scipy>=1.10,<1.15",
                    "mrcfile>=1.4", "threadpoolctl>=3.1", "astra-toolbox>=2.1"]


class Plugin(pwem.Plugin):
    """Scipion plugin for orientlearn. Pure Python; ``scipion3 installb orientlearn``
    optionally adds an environment of its own (TensorFlow with CUDA, the command line)."""
    # pyworkflow names the plugin and finds its folder (templates, protocols.conf) from
    # the class's module: it is the package's, where Scipion finds it (orientlearn.Plugin).
    __module__ = "orientlearn"
    _url = "https://arxiv.org/abs/2104.06237"
    _processingField = ["SPA"]
    _homeVar = ORIENTLEARN_HOME
    _supportedVersions = [__version__]   # the environment's folder is orientlearn-<version>

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(ORIENTLEARN_GPU, "",
                       description="Default GPU ids of the protocols' 'GPU ids' field "
                                   "(e.g. '0,1'; CUDA_VISIBLE_DEVICES of their steps); "
                                   "empty: 0. Without a GPU everything runs on the CPU.")
        cls._defineEmVar(ORIENTLEARN_HOME, f"orientlearn-{__version__}",
                         description="Folder of the plugin's own environment (made by "
                                     "'scipion3 installb orientlearn'): TensorFlow with "
                                     "CUDA and the orientlearn command line. When it "
                                     "exists, 'recover orientations' runs there.")
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

    # -------------------------- the plugin's own environment -----------------------
    @classmethod
    def getEnvironmentPath(cls, *paths):
        """Path inside the plugin's environment (``ORIENTLEARN_HOME/env``)."""
        home = cls.getVar(ORIENTLEARN_HOME) or os.environ.get(ORIENTLEARN_HOME, "")
        return os.path.join(home, ENV_FOLDER, *paths) if home else ""

    @classmethod
    def getProgram(cls):
        """The ``orientlearn`` command line of the plugin's environment."""
        return cls.getEnvironmentPath("bin", "orientlearn") if cls.getEnvironmentPath() else ""

    @classmethod
    def usesOwnEnvironment(cls):
        """True when ``scipion3 installb orientlearn`` made the environment (path check)."""
        program = cls.getProgram()
        return bool(program) and os.path.exists(program)

    @classmethod
    def getEnviron(cls):
        """Environment of programs started by the protocols: this process's (threads and
        CUDA_VISIBLE_DEVICES as the protocol set them), without PYTHONPATH when they run
        in the plugin's environment (its Python must not see Scipion's packages)."""
        import pyworkflow.utils as pwutils
        environ = pwutils.Environ(os.environ)
        if cls.usesOwnEnvironment():
            environ.pop("PYTHONPATH", None)
        return environ

    @classmethod
    def _pluginSource(cls):
        """What pip installs as orientlearn in the environment: this source tree in
        development mode (editable), else the released package of this version."""
        source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.exists(os.path.join(source, "setup.py")):
            return f"-e '{source}'"
        return f"'scipion-em-orientlearn=={__version__}'"

    @classmethod
    def defineBinaries(cls, env):
        """``scipion3 installb orientlearn``: a virtual environment made with Scipion's
        Python, holding TensorFlow with CUDA, ASTRA and orientlearn's core + CLI."""
        python = sys.executable
        envdir = f"./{ENV_FOLDER}"
        pip = f"{envdir}/bin/python -m pip install -q"
        requirements = " ".join(f"'{r}'" for r in ENV_REQUIREMENTS)
        command = (f"{python} -m venv {envdir} && {pip} --upgrade pip && "
                   f"{pip} {requirements} && {pip} --no-deps {cls._pluginSource()} && "
                   f"touch {ENV_FLAG}")
        env.addPackage("orientlearn", version=__version__, tar="void.tgz",
                       commands=[(command, [ENV_FLAG, f"{ENV_FOLDER}/bin/python"])],
                       neededProgs=[], default=False)

    @classmethod
    def validateInstallation(cls):
        """Path checks only (no import; well under a second): the plugin's environment
        when installed, else TensorFlow findable in this Python."""
        if cls.usesOwnEnvironment():
            return []
        if importlib.util.find_spec("tensorflow") is not None:
            return []
        message = ("orientlearn needs TensorFlow. Install the plugin's environment (plugin "
                   "manager, or: scipion3 installb orientlearn), or TensorFlow in Scipion's "
                   "Python (scipion3 pip install 'tensorflow-cpu>=2.18,<2.19'). "
                   f"Expected {cls.getProgram()} or an importable tensorflow.")
        return [message]

    @classmethod
    def getDemoMap(cls):
        """Path of the bundled 5j0n density map (public PDB data, 3.667 A/voxel)."""
        return os.path.join(os.path.dirname(__file__), "data", DEMO_MAP)
