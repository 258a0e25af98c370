"""Viewers of orientlearn: plots (pure matplotlib), figures per protocol, Scipion viewers."""
from .viewers import DistanceModelViewer, OrientLearnViewer

__all__ = ["DistanceModelViewer", "OrientLearnViewer"]
