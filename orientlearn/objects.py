"""Scipion objects of orientlearn."""
import json
import os

import pyworkflow.object as pwobj
from pwem.objects import EMObject


class DistanceModel(EMObject):
    """A trained orientation-distance network (the Siamese network of the paper).

    Holds the path of the saved Keras model (metadata JSON beside it), the image size and
    sampling rate it expects, the symmetry it was trained with and a summary of its
    training data.
    """

    def __init__(self, filename=None, **kwargs):
        EMObject.__init__(self, **kwargs)
        self._filename = pwobj.String(filename)
        self._imageSize = pwobj.Integer(kwargs.get("imageSize"))
        self._samplingRate = pwobj.Float(kwargs.get("samplingRate"))
        self._symmetry = pwobj.String(kwargs.get("symmetry", "C1"))
        self._trainingSummary = pwobj.String(kwargs.get("trainingSummary", ""))
        self._historyFile = pwobj.String(kwargs.get("historyFile"))

    def getFileName(self):
        return self._filename.get()

    def setFileName(self, filename):
        self._filename.set(filename)

    def getImageSize(self):
        return self._imageSize.get()

    def setImageSize(self, size):
        self._imageSize.set(size)

    def getSamplingRate(self):
        return self._samplingRate.get()

    def setSamplingRate(self, rate):
        self._samplingRate.set(rate)

    def getSymmetry(self):
        return self._symmetry.get()

    def setSymmetry(self, sym):
        self._symmetry.set(sym)

    def getTrainingSummary(self):
        return self._trainingSummary.get()

    def setTrainingSummary(self, text):
        self._trainingSummary.set(text)

    def getHistoryFile(self):
        return self._historyFile.get()

    def setHistoryFile(self, path):
        self._historyFile.set(path)

    def getHistory(self):
        """Training history dict (``loss``, ``val_loss``, ... per epoch) or ``{}``."""
        path = self.getHistoryFile()
        if path and os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return {}

    def getFiles(self):
        return {f for f in (self.getFileName(), self.getHistoryFile()) if f}

    def __str__(self):
        return (f"DistanceModel ({self.getImageSize()} px, "
                f"{self.getSamplingRate() or 0:.3f} A/px, {self.getSymmetry()})")
