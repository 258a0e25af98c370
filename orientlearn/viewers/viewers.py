"""Scipion viewers of orientlearn: each protocol's figures in windows, maps in ChimeraX."""
import pyworkflow.viewer as pwviewer

from .. import protocols as p
from ..objects import DistanceModel
from .figures import protocol_figures


class FigureView(pwviewer.View):
    """Shows one matplotlib Figure (built off-screen by ``plots.py``) in a window."""

    def __init__(self, figure, title=""):
        self.figure, self.title = figure, title

    def show(self):
        import matplotlib.pyplot as plt
        manager = plt.figure().canvas.manager     # a window to host our figure
        manager.canvas.figure = self.figure
        self.figure.set_canvas(manager.canvas)
        if self.title:
            manager.set_window_title(self.title)
        plt.show(block=False)


class OrientLearnViewer(pwviewer.Viewer):
    """Plots of simulate, train, recover, reconstruct, compare and ab initio (and the map
    in ChimeraX when Scipion's ChimeraX plugin is installed)."""
    _label = "orientlearn viewer"
    _environments = [pwviewer.DESKTOP_TKINTER]
    _targets = [p.OrientLearnProtSimulate, p.OrientLearnProtTrain, p.OrientLearnProtRecover,
                p.OrientLearnProtReconstruct, p.OrientLearnProtCompare,
                p.OrientLearnProtAbInitio]

    def _visualize(self, obj, **kwargs):
        views = [FigureView(fig, f"{obj.getRunName()}: {name.replace('_', ' ')}")
                 for name, fig in protocol_figures(obj).items()]
        if isinstance(obj, (p.OrientLearnProtReconstruct, p.OrientLearnProtAbInitio)) and \
                hasattr(obj, "outputVolume"):
            views += self._chimeraViews(obj.outputVolume.getFileName())
        if isinstance(obj, p.OrientLearnProtCompare):
            views.append(pwviewer.MessageView("\n".join(obj.getTable()),
                                              title="Orientation errors",
                                              tkParent=self.getTkRoot()))
        return views

    @staticmethod
    def _chimeraViews(path):
        try:
            import os

            from pwem.viewers.viewer_chimera import Chimera, ChimeraView
            if Chimera.getProgram() and os.path.exists(Chimera.getProgram()):
                return [ChimeraView(path)]
        except Exception:
            pass
        return []


class DistanceModelViewer(pwviewer.Viewer):
    """Training curves of a trained distance model."""
    _label = "distance model viewer"
    _environments = [pwviewer.DESKTOP_TKINTER]
    _targets = [DistanceModel]

    def _visualize(self, obj, **kwargs):
        from .plots import plot_training_history
        hist = obj.getHistory()
        if not hist:
            return [pwviewer.MessageView("No training history stored with this model.",
                                         tkParent=self.getTkRoot())]
        return [FigureView(plot_training_history(hist), "Distance learning")]
