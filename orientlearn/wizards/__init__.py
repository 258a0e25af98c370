"""Scipion wizards of orientlearn."""
from .wizards import NoiseWizard, ImageSizeWizard, MaxShiftWizard, SymmetryWizard
