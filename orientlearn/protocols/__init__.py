"""Scipion protocols of orientlearn: simulate, train, recover, reconstruct, compare,
refine, ab initio, and the peer baseline common lines (ASPIRE)."""
from .protocol_abinitio import OrientLearnProtAbInitio
from .protocol_aspire import OrientLearnProtAspire
from .protocol_base import OrientLearnProtBase
from .protocol_compare import OrientLearnProtCompare
from .protocol_reconstruct import OrientLearnProtReconstruct
from .protocol_recover import OrientLearnProtRecover
from .protocol_refine import OrientLearnProtRefine
from .protocol_simulate import OrientLearnProtSimulate
from .protocol_train import OrientLearnProtImportModel, OrientLearnProtTrain

__all__ = [
    "OrientLearnProtAbInitio", "OrientLearnProtAspire", "OrientLearnProtBase",
    "OrientLearnProtCompare", "OrientLearnProtReconstruct", "OrientLearnProtRecover",
    "OrientLearnProtRefine", "OrientLearnProtSimulate", "OrientLearnProtImportModel",
    "OrientLearnProtTrain",
]
