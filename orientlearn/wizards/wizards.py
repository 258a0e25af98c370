"""Scipion wizards of orientlearn (the numbers come from ``helpers.py``)."""
import pyworkflow.wizard as pwizard
from pyworkflow.gui import dialog

from ..protocols import (
    OrientLearnProtCompare,
    OrientLearnProtReconstruct,
    OrientLearnProtSimulate,
    OrientLearnProtTrain,
)
from . import helpers


def _volume_array(protocol):
    from ..convert import clean_path
    from ..core.volumes import read_volume
    vol = protocol.inputVolume.get()
    if vol is None:
        raise ValueError("Select an input volume first.")
    return read_volume(clean_path(vol.getFileName()))[0], vol


class NoiseWizard(pwizard.Wizard):
    """sigma^2 <-> SNR (dB) for simulate, with a preview of a noisy particle."""
    _targets = [(OrientLearnProtSimulate, ["sigma2", "snrDb"])]

    def show(self, form, *args):
        from ..core import image_ops
        prot = form.protocol
        try:
            volume, _ = _volume_array(prot)
        except ValueError as e:
            dialog.showWarning("Noise", str(e), form.root)
            return
        if prot.noiseMode.get() == 2:
            sigma2 = image_ops.snr_db_to_sigma2(prot.snrDb.get())
        else:
            sigma2 = prot.sigma2.get()
        snr = image_ops.sigma2_to_snr_db(sigma2)
        form.setVar("sigma2", round(sigma2, 4))
        form.setVar("snrDb", round(snr, 2))
        self._preview(volume, sigma2, prot.imageSize.get() or None, snr)

    @staticmethod
    def _preview(volume, sigma2, size, snr):
        import matplotlib.pyplot as plt
        clean, noisy = helpers.noisy_preview(volume, sigma2, size=size)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        for ax, img, title in zip(axes, (clean, noisy),
                                  ("clean", f"sigma^2 = {sigma2:.3g} ({snr:.1f} dB)")):
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_title(title)
            ax.axis("off")
        plt.show(block=False)


class ImageSizeWizard(pwizard.Wizard):
    """Even box for a target pixel size (asks for the pixel size in Angstrom)."""
    _targets = [(OrientLearnProtSimulate, ["imageSize"]), (OrientLearnProtTrain, ["imageSize"])]

    def show(self, form, *args):
        prot = form.protocol
        obj = prot.inputVolume.get() if hasattr(prot, "inputVolume") else \
            (prot.inputParticles[0].get() if len(prot.inputParticles) else None)
        if obj is None:
            dialog.showWarning("Image size", "Select the input first.", form.root)
            return
        box, px = max(obj.getDim()), obj.getSamplingRate()
        answer = dialog.askString("Image size", f"Target pixel size (A), now {px:.3f} A at "
                                  f"{box} px:", form.root, defaultValue=f"{2 * px:.2f}")
        if answer:
            new_box, new_px = helpers.box_for_pixel_size(box, px, float(answer))
            form.setVar("imageSize", new_box)
            dialog.showInfo("Image size", f"{new_box} px at {new_px:.3f} A/px", form.root)


class MaxShiftWizard(pwizard.Wizard):
    """Maximum shift as a fraction of the output box."""
    _targets = [(OrientLearnProtSimulate, ["maxShift"])]

    def show(self, form, *args):
        prot = form.protocol
        vol = prot.inputVolume.get()
        if vol is None:
            dialog.showWarning("Maximum shift", "Select an input volume first.", form.root)
            return
        box = prot.imageSize.get() or max(vol.getDim())
        answer = dialog.askString("Maximum shift", f"Fraction of the {box} px box:",
                                  form.root, defaultValue="0.05")
        if answer:
            form.setVar("maxShift", helpers.max_shift_for_fraction(box, float(answer)))


class SymmetryWizard(pwizard.Wizard):
    """Pick a point group; shows what the asymmetric-unit restriction implies."""
    _targets = [(OrientLearnProtSimulate, ["symmetryGroup"]),
                (OrientLearnProtTrain, ["symmetryGroup"]),
                (OrientLearnProtReconstruct, ["symmetryGroup"]),
                (OrientLearnProtCompare, ["symmetryGroup"])]

    def show(self, form, *args):
        choices = helpers.symmetry_choices()
        text = "\n".join(f"{name:>4}  ({order:>2} mates)" for name, order, _ in choices)
        answer = dialog.askString("Symmetry group", "Point group:\n" + text, form.root,
                                  defaultValue=form.protocol.symmetryGroup.get())
        if answer:
            try:
                info = helpers.symmetry_restriction(answer)
            except ValueError as e:
                dialog.showError("Symmetry group", str(e), form.root)
                return
            form.setVar("symmetryGroup", answer.strip().upper())
            dialog.showInfo("Symmetry group", info, form.root)


__all__ = ["NoiseWizard", "ImageSizeWizard", "MaxShiftWizard", "SymmetryWizard"]
