"""orientlearn: ab initio particle orientations by learning (Banjac et al. 2021).

A Siamese network, trained on simulated projections, estimates the angle between the
orientations of two particle images; the orientations are then recovered by making their
pairwise angles match the estimated ones. The numerics live in ``orientlearn.core`` (no
Scipion import); this package is the Scipion plugin around them.

Importing this package (or ``orientlearn.core``) changes no environment variable, writes
no file and imports nothing from Scipion: ``Plugin`` (the ``pwem.Plugin`` that Scipion's
plugin discovery instantiates) is built on first access, and the headless Scipion set-up
of scripts, the demo and the tests is an explicit call,
``orientlearn.scipion_env.setup_scipion_environment()``.
"""
from .constants import DEMO_MAP, ORIENTLEARN_ASPIRE_PYTHON, ORIENTLEARN_GPU  # noqa: F401

__version__ = "0.1.0"
_logo = None
_references = ["Banjac2021"]


def __getattr__(name):
    """``orientlearn.Plugin`` on first access (PEP 562): Scipion's ``Domain.registerPlugin``
    reads ``module.Plugin``; importing pwem only then keeps ``import orientlearn`` free of
    Scipion for core users."""
    if name == "Plugin":
        from .plugin import Plugin
        globals()["Plugin"] = Plugin
        return Plugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
