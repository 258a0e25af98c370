"""Names shared by the Scipion layer of orientlearn."""
from .core import network, recovery

# Plugin variables (read from the environment or Scipion's config)
ORIENTLEARN_GPU = "ORIENTLEARN_GPU"          # default GPU ids for TensorFlow, "" = CPU
# Folder of the plugin's own environment (scipion3 installb orientlearn)
ORIENTLEARN_HOME = "ORIENTLEARN_HOME"
# Python of an environment with ASPIRE (same name as core.peer_aspire.ASPIRE_PYTHON_VAR;
# not imported from there so that `python -m orientlearn.core.peer_aspire` runs cleanly).
ORIENTLEARN_ASPIRE_PYTHON = "ORIENTLEARN_ASPIRE_PYTHON"

# Threads of the parallel section by default (at most the cores the run may use)
DEFAULT_THREADS = 4

# Choices in forms
ORIENT_UNIFORM = 0
ORIENT_SYMMETRY = 1

SIM_FROM_VOLUME = 0          # simulate: what the particles are projections of
SIM_FROM_ATOMSTRUCT = 1
SIM_FROM_FILES = 2

NOISE_NONE = 0
NOISE_SIGMA2 = 1
NOISE_SNR = 2

RECONSTRUCT_FOURIER = 0
RECONSTRUCT_ASTRA = 1

# Form choices are the core's own lists (the first one is the default).
ARCHITECTURES = list(network.ARCHITECTURES)
LOSSES = list(network.PAIR_LOSSES)
DISTANCE_HEADS = list(network.DISTANCE_HEADS)
RECOVERY_LOSSES = list(recovery.RECOVERY_LOSSES)

DEMO_MAP = "5j0n.mrc"
DEMO_MAP_PIXEL_SIZE = 3.667   # Angstrom per voxel of the bundled 5j0n map

# File name of the generalist distance model shipped in orientlearn/data/ (when one is);
# 'ab initio' uses it when the user gives no model.
GENERALIST_MODEL = "generalist.keras"
