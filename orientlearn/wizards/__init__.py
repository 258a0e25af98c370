"""Scipion wizards of orientlearn."""
from .wizards import ImageSizeWizard, MaxShiftWizard, NoiseWizard, SymmetryWizard

__all__ = ["ImageSizeWizard", "MaxShiftWizard", "NoiseWizard", "SymmetryWizard"]
