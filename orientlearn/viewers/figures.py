"""The figures of each orientlearn protocol, from its outputs; headless or in Scipion.

``protocol_figures(prot)`` returns ``{name: matplotlib Figure}``;
``save_protocol_figures(prot, folder)`` writes them as PNG and returns the paths. The
Scipion viewers (``viewers.py``) show the same figures in windows.
"""
import json
import os

import numpy as np

from . import plots


def _extra(prot, name):
    return prot._getExtraPath(name)


def _simulate_figures(prot):
    from ..convert import particle_orientations, read_stack
    figs = {}
    noisy = read_stack(_extra(prot, "particles.mrcs"))[:16]
    clean_path = _extra(prot, "particles_clean.mrcs")
    if os.path.exists(clean_path):
        clean = read_stack(clean_path)[:8]
        figs["gallery"] = plots.plot_particle_gallery(
            np.concatenate([clean, noisy[:8]]), ncols=8,
            titles=[f"clean {i + 1}" for i in range(len(clean))]
            + [f"noisy {i + 1}" for i in range(min(8, len(noisy)))])
    else:
        figs["gallery"] = plots.plot_particle_gallery(noisy, ncols=8)
    _, q, _ = particle_orientations(prot.outputParticles)
    figs["angular_distribution"] = plots.plot_angular_distribution(q)
    return figs


def _train_figures(prot):
    from ..protocols.protocol_train import EVALUATION_FILE, HISTORY_FILE
    figs = {}
    hist_path = _extra(prot, HISTORY_FILE)
    if os.path.exists(hist_path):
        with open(hist_path) as f:
            figs["training_history"] = plots.plot_training_history(json.load(f))
    ev = _extra(prot, EVALUATION_FILE)
    if os.path.exists(ev):
        with np.load(ev) as d:
            figs["distance_density"] = plots.plot_distance_density(d["d_true"], d["d_est"])
    return figs


def _recover_figures(prot, reference=None):
    from ..convert import particle_orientations
    figs = {"recovery_history": plots.plot_recovery_history(prot.getLossHistory())}
    _, q, _ = particle_orientations(prot.outputParticles)
    figs["angular_distribution"] = plots.plot_angular_distribution(
        q, title="Recovered views (arbitrary global rotation)")
    return figs


def _reconstruct_figures(prot):
    from ..convert import clean_path
    from ..core.volumes import read_volume
    from ..protocols.protocol_reconstruct import FSC_FILE
    vol, _ = read_volume(clean_path(prot.outputVolume.getFileName()), cube=False)
    figs = {"central_slices": plots.plot_central_slices(vol, title="Reconstruction")}
    with np.load(_extra(prot, FSC_FILE)) as d:
        curves = [("half maps", d["freq"], d["fsc_half"])]
        if "fsc_ref" in d.files:
            curves.append(("vs reference", d["freq"], d["fsc_ref"]))
        figs["fsc"] = plots.plot_fsc(curves, pixel_size=float(d["pixel_size"]))
    return figs


def _compare_figures(prot):
    from ..protocols.protocol_compare import ERRORS_FILE, MAP_FSC_FILE
    with np.load(_extra(prot, ERRORS_FILE)) as d:
        errors = {"O(4) aligned (paper's E_OR)": d["o4_errors"],
                  "rotation + handedness aligned": d["rot_errors"]}
        components = {"viewing direction": d["rot_viewing_direction"],
                      "in-plane": d["rot_in_plane"]}
    figs = {"error_histograms": plots.plot_error_histograms(errors),
            "error_components": plots.plot_error_histograms(
                components, title="Error components (rotation + handedness)")}
    if os.path.exists(_extra(prot, MAP_FSC_FILE)):
        with np.load(_extra(prot, MAP_FSC_FILE)) as d:
            figs["map_fsc"] = plots.plot_fsc([("map vs reference", d["freq"], d["fsc"])],
                                             pixel_size=float(d["pixel_size"]))
    return figs


def _abinitio_figures(prot):
    """The first map when it came from common lines; per iteration: the subset's map
    (central slices); the half-map FSC of every stage;
    resolution and orientation movement per stage; the final map and angular
    distribution."""
    from ..convert import clean_path, particle_orientations
    from ..core.volumes import read_volume
    figs = {}
    start = prot.getCommonLinesMap()
    if start:
        vol, _ = read_volume(start, cube=False)
        figs["common_lines_map_slices"] = plots.plot_central_slices(
            vol, title="First map: class averages + common lines")
    for k, path in enumerate(prot.getIterationVolumes(), start=1):
        vol, _ = read_volume(path, cube=False)
        figs[f"iteration_{k:02d}_slices"] = plots.plot_central_slices(
            vol, title=f"Iteration {k}")
    hist = prot.getHistory()
    records = hist.get("records", [])
    if records:
        curves = [(f"{r['iteration']}: {r['stage']}", r["frequencies"], r["fsc"])
                  for r in records]
        figs["fsc_per_iteration"] = plots.plot_fsc(
            curves, pixel_size=hist.get("pixel_size"), title="Half-map FSC per iteration")
        figs["iteration_history"] = plots.plot_iteration_history(records)
    if hasattr(prot, "outputVolume"):
        vol, _ = read_volume(clean_path(prot.outputVolume.getFileName()), cube=False)
        figs["final_slices"] = plots.plot_central_slices(
            vol, title="Final map (hand undetermined)")
        _, q, _ = particle_orientations(prot.outputParticles)
        figs["angular_distribution"] = plots.plot_angular_distribution(
            q, title="Final views (arbitrary global rotation)")
    return figs


def protocol_figures(prot):
    """``{name: Figure}`` for a finished orientlearn protocol (empty for others)."""
    from .. import protocols as p
    table = [(p.OrientLearnProtSimulate, _simulate_figures),
             (p.OrientLearnProtTrain, _train_figures),
             (p.OrientLearnProtRecover, _recover_figures),
             (p.OrientLearnProtReconstruct, _reconstruct_figures),
             (p.OrientLearnProtCompare, _compare_figures),
             (p.OrientLearnProtAbInitio, _abinitio_figures)]
    for cls, make in table:
        if isinstance(prot, cls):
            return make(prot)
    return {}


def save_protocol_figures(prot, folder, prefix="", dpi=100):
    """Write every figure of ``prot`` as ``folder/<prefix><name>.png``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fig in protocol_figures(prot).items():
        path = os.path.join(folder, f"{prefix}{name}.png")
        plots.save_figure(fig, path, dpi=dpi)
        paths.append(path)
    return paths
