"""Protocol ``compare orientations``: E_OR both ways, per-particle errors, optional FSC."""
import json
import os

import numpy as np
import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import PROD

from .. import convert
from ..core import geometry
from .protocol_base import OrientLearnProtBase

RESULT_FILE = "comparison.json"
ERRORS_FILE = "errors.npz"
MAP_FSC_FILE = "map_fsc.npz"
ERROR_ATTR = "_orientlearn_error"          # radians, after rotation + handedness
ERROR_O4_ATTR = "_orientlearn_errorO4"     # radians, after O(4)


class OrientLearnProtCompare(OrientLearnProtBase, ProtAnalysis3D):
    """Compare two orientation assignments of the same particles (matched by id).

    Errors are reported aligned two ways: by the full O(4) (the paper's E_OR, eq. 5-6,
    solved deterministically) and by a global rotation + handedness only, which is all a
    reconstruction is blind to. The error is split into viewing direction and in-plane
    parts. The output is a copy of the first set with its orientations expressed in the
    reference's frame (rotation + handedness), each particle carrying its errors, so the
    worst particles can be subset and the aligned set reconstructed and compared with a
    reference map. Offsets are compared too: a map's origin is arbitrary, so the 3-D
    translation between the two frames is fitted first (``alignment.fit_frame_translation``)
    and the output's offsets are moved into the reference's frame with it.
    """
    _label = "compare orientations"
    _devStatus = PROD
    _possibleOutputs = {"outputParticles": SetOfParticles}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj",
                      important=True, label="Particles to evaluate",
                      help="Orientations to evaluate (e.g. from 'recover orientations', "
                           "RELION, cryoSPARC, Xmipp, ASPIRE).")
        form.addParam("referenceParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj",
                      important=True, label="Reference particles",
                      help="The same particles (same ids) with reference orientations, "
                           "e.g. the ground truth of 'simulate'.")
        form.addParam("symmetryGroup", params.StringParam, default="C1",
                      label="Symmetry group",
                      help="Errors are the minimum over the group's symmetry mates. "
                           + geometry.SYMMETRY_HELP)
        form.addSection(label="Maps (optional)")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume",
                      allowsNull=True, label="Map to evaluate",
                      help="Optional: a map reconstructed from the evaluated particles, "
                           "e.g. by 'reconstruct' from this protocol's output (which is "
                           "expressed in the reference's frame). Its FSC against the "
                           "reference map is reported. The handedness is chosen "
                           "automatically; no global rotation is searched, so the two maps "
                           "must share a frame.")
        form.addParam("referenceVolume", params.PointerParam, pointerClass="Volume",
                      allowsNull=True, label="Reference map",
                      help="Optional: the reference map (e.g. the map the particles were "
                           "simulated from). It is resampled to the pixel size and box of "
                           "the map to evaluate.")

    def _insertAllSteps(self):
        self._acquireRunLock()
        signature = self._stepSignature()
        self._insertFunctionStep(self.compareStep, signature, needsGPU=False)
        self._insertFunctionStep(self.createOutputStep, signature, needsGPU=False)

    def _matched(self):
        """``(ids, q_est, q_ref, shifts_est, shifts_ref)`` of the particles both sets have;
        offsets in px of the evaluated set."""
        parts, ref = self.inputParticles.get(), self.referenceParticles.get()
        ids_e, q_e, sh_e = convert.particle_orientations(parts)
        ids_r, q_r, sh_r = convert.particle_orientations(ref)
        sh_r = sh_r * ref.getSamplingRate() / parts.getSamplingRate()
        common, ie, ir = np.intersect1d(ids_e, ids_r, return_indices=True)
        return common, q_e[ie], q_r[ir], sh_e[ie], sh_r[ir]

    def compareStep(self, signature=None):
        from ..core.alignment import compare_orientations, fit_frame_translation
        ids, q_est, q_ref, sh_est, sh_ref = self._matched()
        self.info(f"Comparing {len(ids)} particles matched by id.")
        res = compare_orientations(q_ref, q_est, symmetry=self.symmetryGroup.get())
        frame, shift_errors = fit_frame_translation(q_est, sh_est, sh_ref)
        scalars = {k: float(v) for k, v in res.items()
                   if np.isscalar(v) and not isinstance(v, str)}
        scalars["rot_flipped"] = bool(res["rot_flipped"])
        scalars["n_particles"] = int(len(ids))
        scalars.update(shift_median=float(np.median(shift_errors)),
                       shift_mean=float(np.mean(shift_errors)),
                       frame_translation=[float(v) for v in frame])
        if self._hasMaps():
            scalars.update(self._compareMaps())
        with open(self._getExtraPath(RESULT_FILE), "w") as f:
            json.dump(scalars, f, indent=1)
        # Offsets in the reference's frame: the estimated map's origin moved by ``frame``.
        rot = geometry.quaternion_to_matrix(q_est)
        sh_aligned = sh_est - np.einsum("mij,j->mi", rot[:, :2, :], frame)
        np.savez(self._getExtraPath(ERRORS_FILE), ids=ids, o4_errors=res["o4_errors"],
                 rot_errors=res["rot_errors"], rot_aligned=res["rot_aligned"],
                 shift_errors=shift_errors, shifts_aligned=sh_aligned,
                 rot_viewing_direction=res["rot_viewing_direction"],
                 rot_in_plane=res["rot_in_plane"])
        for line in self.getTable():
            self.info(line)

    def _hasMaps(self):
        return self.inputVolume.get() is not None and self.referenceVolume.get() is not None

    def _compareMaps(self):
        """FSC of the evaluated map against the reference (best handedness)."""
        from ..core import fsc, volumes
        vol_obj = self.inputVolume.get()
        px = vol_obj.getSamplingRate()
        vol, _ = volumes.read_volume(convert.clean_path(vol_obj.getFileName()))
        ref = convert.read_volume_on_grid(self.referenceVolume.get(), vol.shape[0], px)
        from ..core.checks import check_map
        check_map(vol, "Map to evaluate")
        check_map(ref, f"Reference map on the evaluated map's grid ({vol.shape[0]} px at "
                       f"{px:.3f} A/px)")
        freq, values, flipped = fsc.fsc_with_handedness(vol, ref, px)
        try:                            # an FSC without a resolution is an error
            res = dict(map_fsc05=float(fsc.resolution_at(freq, values, 0.5)),
                       map_fsc0143=float(fsc.resolution_at(freq, values, 0.143)),
                       map_flipped=bool(flipped))
        except ValueError as e:
            raise ValueError(f"Map FSC vs reference: {e}") from e
        np.savez(self._getExtraPath(MAP_FSC_FILE), freq=freq, fsc=values, pixel_size=px,
                 flipped=flipped)
        self.info(f"Map FSC vs reference: {res['map_fsc05']:.2f} A at 0.5, "
                  f"{res['map_fsc0143']:.2f} A at 0.143"
                  + (" (mirrored map)" if flipped else ""))
        return res

    def createOutputStep(self, signature=None):
        data = self._loadArrays(ERRORS_FILE)
        parts = self.inputParticles.get()
        ids_all = np.array([p.getObjId() for p in parts.iterItems(orderBy="id")])
        keep = np.isin(ids_all, data["ids"])
        out = self._createSetOfParticles()
        out.copyInfo(parts)
        out.setAlignmentProj()
        row = {int(i): k for k, i in enumerate(data["ids"])}
        for p, ok in zip(parts.iterItems(orderBy="id"), keep):
            if not ok:
                continue
            k = row[p.getObjId()]
            q = p.clone()
            convert.set_particle_orientation(q, data["rot_aligned"][k],
                                             data["shifts_aligned"][k])
            setattr(q, ERROR_ATTR, pwobj.Float(float(data["rot_errors"][k])))
            setattr(q, ERROR_O4_ATTR, pwobj.Float(float(data["o4_errors"][k])))
            out.append(q)
        self._defineOutputs(outputParticles=out)
        self._defineSourceRelation(self.inputParticles, out)
        self._defineSourceRelation(self.referenceParticles, out)

    def getResults(self):
        """Scalars of the comparison (radians) as a dict, or {} before it ran."""
        path = self._getExtraPath(RESULT_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def getTable(self):
        """The error table as text lines (degrees and radians)."""
        r = self.getResults()
        if not r:
            return []
        lines = [f"{'alignment':<28}{'mean':>16}{'median':>16}"]
        for key, label in (("o4", "O(4) (paper's E_OR)"), ("rot", "rotation + handedness")):
            mean, median = r[key + "_mean"], r[key + "_median"]
            lines.append(f"{label:<28}{mean:>8.3f} rad {np.degrees(mean):>5.1f}°"
                         f"{median:>8.3f} rad {np.degrees(median):>5.1f}°")
        lines.append(f"viewing direction / in-plane median (rotation+handedness): "
                     f"{np.degrees(r['rot_viewing_direction_median']):.1f}° / "
                     f"{np.degrees(r['rot_in_plane_median']):.1f}°")
        if "shift_median" in r:
            c = r["frame_translation"]
            lines.append(f"offsets: median error {r['shift_median']:.2f} px, mean "
                         f"{r['shift_mean']:.2f} px after the best frame translation "
                         f"({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) px")
        lines.append(f"unrelated orientations would give mean {r['random_mean']:.3f} rad, "
                     f"median {r['random_median']:.3f} rad"
                     + ("; handedness flipped" if r.get("rot_flipped") else ""))
        if "map_fsc05" in r:
            lines.append(f"map FSC vs reference: {r['map_fsc05']:.2f} A at 0.5, "
                         f"{r['map_fsc0143']:.2f} A at 0.143"
                         + (" (mirrored map matched)" if r.get("map_flipped") else ""))
        return lines

    # -------------------------- INFO ---------------------------------------------
    def _validate(self):
        errors = self._validateNotRunning()
        for label, parts in (("Particles to evaluate", self.inputParticles.get()),
                             ("Reference particles", self.referenceParticles.get())):
            errors += self._validateParticles(parts, label, needOrientations=True, minCount=3,
                                              checkImages=False)
        if errors:
            return errors
        ids_e = {p.getObjId() for p in self.inputParticles.get().iterItems()}
        ids_r = {p.getObjId() for p in self.referenceParticles.get().iterItems()}
        if len(ids_e & ids_r) < 3:
            errors.append("The two sets share fewer than 3 particle ids: compare sets "
                          "derived from the same particles.")
        errors += self._validateSymmetry(self.symmetryGroup.get())
        maps = [self.inputVolume.get(), self.referenceVolume.get()]
        if (maps[0] is None) != (maps[1] is None):
            errors.append("Give both maps (to evaluate and reference) for a map FSC, "
                          "or neither.")
        for label, vol in zip(("Map to evaluate", "Reference map"), maps):
            errors += self._validateVolume(vol, label)
        return errors

    def _summary(self):
        return self.getTable() or ["Output not ready yet."]

    def _methods(self):
        r = self.getResults()
        if not r:
            return []
        return [f"Orientations were compared with the reference on {r['n_particles']} "
                f"particles: median error {np.degrees(r['rot_median']):.1f} degrees after "
                "aligning a global rotation and handedness, "
                f"{np.degrees(r['o4_median']):.1f} degrees after O(4) alignment (E_OR of "
                "[Banjac2021])."]

    def _citations(self):
        return ["Banjac2021"]
