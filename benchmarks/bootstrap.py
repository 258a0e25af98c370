"""Bootstrap from a coarse map: how coarse may the map a distance model is trained on be?

For each start map — the true 5j0n map (the same-protein ceiling), the map low-passed
to 15, 25, 40 A (``volumes.low_pass``: amplitude 1/2 at 1/resolution), the 25 A map
plus a random smooth perturbation (a wrong initial model) — a NEW distance model is
trained from scratch on projections of the start map simulated like the data
(``abinitio.model_from_volume``: the data's CTFs, box, pixel size and the noise level
``abinitio.estimate_noise_sigma2`` measures on the data). It then orients separate test
particles simulated from the TRUE map (``simulation.simulate_particles``: CTF, offsets
up to ``--max-shift`` px, noise ``--sigma2``) the way ab initio does
(``abinitio.ModelGrid`` and ``abinitio.orient``, particles uncentred), and the result is
refined locally against half maps made from the particles themselves
(``refinement.refine_particles``, no reference). The truth only scores: median
orientation error after the best global rotation and hand
(``alignment.align_rotation_handedness``; random: 2.31 rad); how far the start map is
from the truth: its correlation with the true map (an FSC cannot say: a low-pass filter
without zeros leaves the FSC at 1). The half-map FSC is what a user sees.

Usage::

    python benchmarks/bootstrap.py                       # 64 px, sigma^2 0, all maps
    python benchmarks/bootstrap.py --sigma2 0 16 --maps true 25 --out bootstrap.md
    python benchmarks/bootstrap.py --smoke               # tiny, checks the script
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from orientlearn.benchmarking import (  # noqa: E402
    ATOMIC_TEST_PROTEINS,
    BenchmarkRun,
    score_class_averages,
    unseen_protein_maps,
    volume_at_size,
    write_report,
)
from orientlearn.core import (  # noqa: E402
    abinitio,
    alignment,
    common_lines_map,
    refinement,
    simulation,
    volumes,
)

#: Start maps: name -> (low-pass resolution A or None, perturbed?).
MAPS = {"true": (None, False), "15": (15.0, False), "25": (25.0, False),
        "40": (40.0, False), "25+perturbed": (25.0, True), "commonlines": (None, False)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="particle box (px)")
    p.add_argument("--protein", default="5j0n",
                   choices=["5j0n", *(f.split(".")[0] for f in ATOMIC_TEST_PROTEINS)],
                   help="5j0n: the bundled map; else an atomic model of the unseen-protein "
                        "benchmark (benchmarks/unseen.py: its diameter half the box; needs "
                        "the benchmarks extra)")
    p.add_argument("--diameter", type=float, default=None,
                   help="particle diameter (A; default: 260 for 5j0n, the atomic model's)")
    p.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    p.add_argument("--sigma2", type=float, nargs="+", default=[0.0], help="test noise")
    p.add_argument("--n-test", type=int, default=1000, help="test particles (true map)")
    p.add_argument("--max-shift", type=float, default=2.0, help="test offsets (px)")
    p.add_argument("--train-n", type=int, default=2000, help="training particles")
    p.add_argument("--train-epochs", type=int, default=25)
    p.add_argument("--perturbation", type=float, default=0.5,
                   help="RMS of the perturbation / RMS of the map inside its support")
    p.add_argument("--perturbation-resolution", type=float, default=30.0, help="A")
    p.add_argument("--classes", type=int, default=200,
                   help="'commonlines' map: class averages oriented by common lines")
    p.add_argument("--refine-iterations", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the report to this file (after every row)")
    p.add_argument("--smoke", action="store_true", help="tiny run that checks the script")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.n_test, args.train_n, args.train_epochs = 32, 60, 120, 1
        args.maps, args.refine_iterations = ["true", "25+perturbed"], 1
        args.classes = 20
    return args


def smooth_perturbation(vol, px, resolution, amplitude, seed):
    """Random smooth change of ``vol`` (a wrong initial model): white noise low-passed
    to ``resolution`` A, kept where the map is (support: the map above 5 % of its maximum,
    smoothed), scaled to ``amplitude`` x the map's RMS there."""
    rng = np.random.default_rng([seed, 11])
    field = volumes.low_pass(rng.standard_normal(vol.shape).astype(np.float32), px,
                             resolution)
    support = volumes.low_pass((vol > 0.05 * vol.max()).astype(np.float32), px, resolution)
    inside = support > 0.5
    field *= support
    field *= amplitude * np.sqrt(np.mean(vol[inside] ** 2) / np.mean(field[inside] ** 2))
    return (vol + field).astype(np.float32)


def start_map(name, true_map, px, args, test=None, log=None):
    """The start map ``name`` and, for 'commonlines', what its making measured."""
    if name == "commonlines":
        return common_lines_start(test, true_map, px, args, log)
    resolution, perturbed = MAPS[name]
    vol = true_map if resolution is None else volumes.low_pass(true_map, px, resolution)
    if perturbed:
        vol = smooth_perturbation(vol, px, args.perturbation_resolution, args.perturbation,
                                  args.seed)
    return vol, {}


def common_lines_start(test, true_map, px, args, log):
    """The map ab initio makes from the test particles themselves with no reference
    (``common_lines_map``: class averages + common lines, ASPIRE); the error of the class
    averages' orientations against those of the particles they are centred on
    (``info['class_centres']``)."""
    settings = common_lines_map.CommonLinesSettings(n_classes=args.classes, seed=args.seed)
    t = time.perf_counter()
    vol, info = common_lines_map.common_lines_map(test["images"], px, args.diameter,
                                                  ctf=test["ctf"], settings=settings, log=log)
    seconds = time.perf_counter() - t
    k = len(info["quaternions"])
    err, cc = score_class_averages(info, test["quaternions"], true_map, px, args.diameter,
                                   settings)
    log(f"common lines: {k} class averages, median error {err:.3f} rad; first map in the "
        f"truth's frame: correlation {cc:.3f} with the true map")
    return vol, dict(classes_err=err, classes_s=seconds, framed_cc=cc)


def correlation(vol, true_map):
    """Pearson correlation of two maps over the whole box."""
    return float(np.corrcoef(np.ravel(vol), np.ravel(true_map))[0, 1])


def median_error(q_true, q):
    _, q_al = alignment.align_rotation_handedness(q_true, q)
    return float(np.median(alignment.orientation_errors(q_true, q_al)))


def run_row(name, sigma2, true_map, px, test, args, log):
    """Train on the start map ``name``, orient and refine the test particles; a dict."""
    vol, extra = start_map(name, true_map, px, args, test, log)
    diameter_px = args.diameter / px
    est = abinitio.estimate_noise_sigma2(test["images"], diameter_px, args.max_shift)
    # CPU seconds, not wall: on a shared machine the wall clock also counts others' work.
    t = time.process_time()
    model, meta, hist = abinitio.model_from_volume(
        vol, px, n_particles=args.train_n, image_size=args.size, ctf=test["ctf"],
        sigma2=est, max_shift=args.max_shift, epochs=args.train_epochs, seed=args.seed + 1,
        progress=lambda e, n, logs: log(f"{name} sigma2 {sigma2:g}: epoch {e}/{n}: {logs}"))
    train_s = time.process_time() - t
    settings = abinitio.AbInitioSettings(diameter_A=args.diameter)
    grid = abinitio.ModelGrid(meta, args.size, px, args.diameter)
    t = time.process_time()
    q, _ = abinitio.orient(model, meta["head"], grid(test["images"], test["ctf"]),
                           seed=args.seed, n_neighbors=settings.n_neighbors,
                           n_random=settings.n_random, n_steps=settings.recovery_steps)
    orient_s = time.process_time() - t
    err0 = median_error(test["quaternions"], q)
    log(f"{name} sigma2 {sigma2:g}: recovered, median error {err0:.3f} rad")
    rs = refinement.RefinementSettings(
        mask_radius=min(args.size / 2 - 2, diameter_px / 2 + 4),
        max_iterations=args.refine_iterations, min_iterations=1,
        shift_range=args.max_shift + 1, n_threads=args.threads, seed=args.seed)
    t = time.process_time()
    ref = refinement.refine_particles(test["images"], px, q, ctf=test["ctf"], settings=rs,
                                      start_shifts="zero", log=log)
    refine_s = time.process_time() - t
    err1 = median_error(test["quaternions"], ref.quaternions)
    log(f"{name} sigma2 {sigma2:g}: refined, median error {err1:.3f} rad")
    return dict(extra, name=name, sigma2=sigma2, start_cc=correlation(vol, true_map),
                sigma2_est=est, epochs=len(hist["loss"]), val=hist["best_val_loss"],
                baseline=hist["val_constant_baseline"], train_s=train_s, err0=err0,
                err1=err1, half=float(ref.resolution), half05=float(ref.resolution_05),
                orient_s=orient_s, refine_s=refine_s)


def report(rows, args, px, run):
    smoke = "[SMOKE RUN: tiny settings, the numbers mean nothing] " if args.smoke else ""
    lines = [f"### {smoke}Bootstrap from a coarse map: {args.protein} ({args.diameter:.0f} A), "
             "models trained from scratch on "
             f"{args.train_n} projections of the start map ({args.size} px, {px:.2f} A/px, "
             f"{args.train_epochs} epochs, best kept), tested on {args.n_test} particles of the "
             f"TRUE map (CTF, offsets <= {args.max_shift:g} px)", "",
             "| start map | its correlation with the true map | test sigma^2 (estimated) | "
             "training: epochs, best val loss (constant) | training CPU (s) | median "
             "error, recovered (rad) | median error, refined (rad) | half-map FSC0.143 / "
             "0.5 (A) | recover + refine CPU (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = "true map (ceiling)" if r["name"] == "true" else (
            f"{r['name'].replace('+perturbed', '')} A low-pass"
            + (f" + smooth perturbation ({args.perturbation:g} x RMS at "
               f"{args.perturbation_resolution:g} A)" if "perturbed" in r["name"] else ""))
        cc = f"{r['start_cc']:.3f}"
        if r["name"] == "commonlines":
            label = (f"**no map**: {args.classes} class averages + common lines (ASPIRE) of "
                     f"the test particles: averages at {r['classes_err']:.3f} rad, "
                     f"{r['classes_s']:.0f} s wall")
            cc = f"{r['framed_cc']:.3f} (in the truth's frame)"
        lines.append(f"| {label} | {cc} | {r['sigma2']:g} "
                     f"({r['sigma2_est']:.2g}) | {r['epochs']}, {r['val']:.3f} "
                     f"({r['baseline']:.3f}) | {r['train_s']:.0f} | {r['err0']:.3f} | "
                     f"**{r['err1']:.3f}** | {r['half']:.1f} / {r['half05']:.1f} | "
                     f"{r['orient_s']:.0f} + {r['refine_s']:.0f} |")
    lines += ["", "- errors after the best global rotation and hand (random orientations: "
              "2.31 rad); the truth only scores; the refinement starts from offsets 0 and "
              "half maps of the particles themselves (no reference)",
              "- training particles: simulated from the start map with the test particles' "
              "CTFs and the noise level estimated on them (abinitio.model_from_volume); "
              f"seed {args.seed}"] + run.footer() + [""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("bootstrap.py", argv, tensorflow=True)

    def log(line):
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    if args.protein == "5j0n":
        true_map, px = volume_at_size(args.size)
        args.diameter = args.diameter or 260.0
    else:
        _, true_map, px, diameter = unseen_protein_maps(args.size, [args.protein])[0]
        args.diameter = args.diameter or diameter
    rows = []
    for sigma2 in args.sigma2:
        # Test particles: other seeds than the training ones (model_from_volume's seed + 1).
        test = simulation.simulate_particles(true_map, args.n_test, sigma2=sigma2 or None,
                                             ctf=True, max_shift=args.max_shift,
                                             voxel_size=px, seed=args.seed + 1000,
                                             return_clean=False)
        for name in args.maps:
            rows.append(run_row(name, sigma2, true_map, px, test, args, log))
            text = report(rows, args, px, run)
            if args.out and len(rows) < len(args.maps) * len(args.sigma2):
                with open(args.out, "w") as fh:
                    fh.write(text)
    write_report(text, args.out)
    return rows


if __name__ == "__main__":
    main()
