"""Ablation of the ab initio loop: recover alone / + refinement / + fine-tuning (or
retraining).

Simulates particles of the bundled 5j0n map (zero-padded to a ``--box`` px cube at
3.667 A/voxel as in the paper, projections downsampled to ``--size`` px; noise
``--sigma2``, CTF 1-3 um, offsets up to ``--max-shift`` px), then runs
``core.abinitio.run_ab_initio`` (the call the 'ab initio' protocol makes) three times on
the same particles with the same model: recovery only; + local refinement; + refinement
and fine-tuning (each run ``--iterations`` rounds, every round after the first from the
offsets the previous one refined). The truth is used only to score the result: median
orientation error after the best global rotation and hand
(``alignment.align_rotation_handedness``),
median offset error after the best frame translation
(``alignment.fit_frame_translation``), and the FSC (0.5) against the true map of a
reconstruction with those aligned orientations and offsets; also the half-map
resolution a user sees (FSC 0.143). The first row reconstructs with the true
orientations and offsets (the ceiling of these particles).

The model: ``--model PATH`` (a saved distance model; say in ``--model-label`` what it was
trained on), else one trained here on other simulated particles of 5j0n (``--train-*``):
that is the **same-protein ceiling, not ab initio** (it knows the protein), and the table
says so. ``--no-model`` is true ab initio, the protocol's start with neither a model nor a
map: the first map comes from class averages oriented by common lines (ASPIRE,
``core.common_lines_map``) and a model is trained on it inside ``run_ab_initio``; then
two runs: + refinement (the same model every round) and + refinement + retraining (a new
model trained on each round's refined map: the protocol's default).

Usage::

    python benchmarks/abinitio.py                    # 5j0n at 64 px, sigma^2 = 16
    python benchmarks/abinitio.py --size 32 --n 600 --sigma2 4 --out abinitio.md
    python benchmarks/abinitio.py --no-model --sigma2 16   # true ab initio (ASPIRE start)
    python benchmarks/abinitio.py --smoke            # tiny, checks the script
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


from orientlearn.benchmarking import (  # noqa: E402
    BenchmarkRun,
    ctf_stack,
    score_against_truth,
    write_report,
)
from orientlearn.core import (  # noqa: E402
    abinitio,
    image_ops,
    model_io,
    simulation,
    training,
    volumes,
)

MAP_PATH = os.path.join(REPO, "orientlearn", "data", "5j0n.mrc")
ROWS = [("recover alone", dict(refine=False, fine_tune=False, retrain=False)),
        ("+ refinement", dict(refine=True, fine_tune=False, retrain=False)),
        ("+ refinement + fine-tuning", dict(refine=True, fine_tune=True, retrain=False))]
#: With no model: the model trained on the first map, kept or retrained every round.
NO_MODEL_ROWS = [ROWS[1], ("+ refinement + retraining", dict(refine=True, retrain=True))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--box", type=int, default=116, help="map box before downsampling (px)")
    p.add_argument("--size", type=int, default=64, help="particle box (px)")
    p.add_argument("--diameter", type=float, default=260.0, help="particle diameter (A)")
    p.add_argument("--n", type=int, default=1000, help="particles")
    p.add_argument("--subset", type=int, default=0, help="particles in the loop (0: all)")
    p.add_argument("--sigma2", type=float, default=16.0, help="noise (0: none)")
    p.add_argument("--max-shift", type=float, default=4.0, help="offsets (px of --box)")
    p.add_argument("--iterations", type=int, default=2, help="rounds of each run")
    p.add_argument("--refine-iterations", type=int, default=4)
    p.add_argument("--fine-tune-particles", type=int, default=2000)
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--model", help="a saved distance model (else: trained here on 5j0n)")
    p.add_argument("--model-label", default="", help="what --model was trained on")
    p.add_argument("--no-model", action="store_true",
                   help="no model and no map: start from class averages + common lines")
    p.add_argument("--classes", type=int, default=200, help="with --no-model")
    p.add_argument("--volume-epochs", type=int, default=60,
                   help="with --no-model: epochs of the model trained on the first map")
    p.add_argument("--volume-image-size", type=int, default=64,
                   help="with --no-model: box (px) that model is trained at")
    p.add_argument("--train-n", type=int, default=3000)
    p.add_argument("--train-epochs", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=0, help="steps per epoch (0: auto)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=7, help="of the particles (paper.py trains "
                   "its models on seed 0's particles: other particles here)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--figures", metavar="DIR",
                   help="write PNGs per row: map slices after the first orientation and at "
                        "the end, half-map FSC of every stage, resolution per stage")
    p.add_argument("--smoke", action="store_true", help="tiny run that checks the script")
    args = p.parse_args(argv)
    if args.smoke:
        args.box, args.size, args.n, args.sigma2, args.iterations = 76, 32, 120, 1.0, 2
        args.refine_iterations, args.fine_tune_particles, args.fine_tune_epochs = 1, 100, 1
        args.train_n, args.train_epochs, args.train_steps = 200, 1, 4
        args.classes, args.volume_epochs = 30, 1
    return args


def true_maps(box, size):
    """The map in a ``box`` cube (voxel kept) and downsampled to ``size``, with their
    voxel sizes (A)."""
    vol, voxel = volumes.read_volume(MAP_PATH)
    big = volumes.crop_or_pad_volume(vol, box)
    return big, voxel, volumes.downsample_volume(big, size), voxel * box / size


def same_protein_model(vol, px, args, log):
    """A model trained on other simulated particles of the same map (not ab initio)."""
    sim = simulation.simulate_particles(vol, args.train_n, sigma2=args.sigma2 or None,
                                        ctf=True, max_shift=args.max_shift, voxel_size=px,
                                        seed=args.seed + 1000, return_clean=False)
    model, hist = training.train_distance_model(
        image_ops.downsample(sim["images"], args.size), sim["quaternions"],
        epochs=args.train_epochs, n_features=32,
        steps_per_epoch=args.train_steps or None, seed=args.seed, head="rotation",
        progress=lambda e, n, logs: log(f"training epoch {e}/{n}: {logs}"))
    meta = dict(image_size=args.size, pixel_size=px * vol.shape[0] / args.size,
                head="rotation")
    return model, meta, (f"trained here on {args.train_n} other particles of 5j0n "
                         f"(sigma^2 {args.sigma2:g}, CTF), {len(hist['loss'])} epochs, best "
                         f"val loss {hist['best_val_loss']:.3f}: SAME-PROTEIN CEILING, not "
                         "ab initio")


def score(images, px, ctfs, q, shifts, sim, vol, mask_radius):
    """Errors against the truth and FSC0.5 of the truth-aligned reconstruction."""
    return score_against_truth(images, px, ctfs, q, shifts, sim["quaternions"],
                               sim["shifts"], vol, mask_radius)


def save_figures(folder, tag, res, px):
    """The viewer's figures of one run (``viewers/plots.py``) as PNGs in ``folder``."""
    from orientlearn.viewers import plots
    os.makedirs(folder, exist_ok=True)
    figs = {"first_map": plots.plot_central_slices(res.iteration_volumes[0],
                                                   title="After the first orientation"),
            "final_map": plots.plot_central_slices(res.volume, title="Final map"),
            "fsc": plots.plot_fsc([(f"{r['iteration']}: {r['stage']}", r["frequencies"],
                                    r["fsc"]) for r in res.history], pixel_size=px,
                                  title="Half-map FSC per stage"),
            "iterations": plots.plot_iteration_history(res.history)}
    for name, fig in figs.items():
        plots.save_figure(fig, os.path.join(folder, f"abinitio_{tag}_{name}.png"))


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("abinitio.py", argv, tensorflow=True)

    def log(line):
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    big, voxel, vol, px = true_maps(args.box, args.size)
    # As benchmarks/paper.py: noise and offsets at the full box, then Fourier-downsampled.
    sim = simulation.simulate_particles(big, args.n, sigma2=args.sigma2 or None, ctf=True,
                                        max_shift=args.max_shift, voxel_size=voxel,
                                        seed=args.seed, return_clean=False)
    sim["images"] = image_ops.downsample(sim["images"], args.size)
    sim["shifts"] = sim["shifts"] * args.size / args.box
    images, params = sim["images"], sim["ctf"]
    ctfs = ctf_stack(params, args.size, px)
    diameter_A = args.diameter
    mask_radius = min(args.size / 2 - 2, diameter_A / px / 2 + 4)
    t = time.perf_counter()
    if args.no_model:
        model, meta, train_s = None, None, 0.0
        label = (f"NONE, true ab initio: {args.classes} class averages oriented by common "
                 "lines (ASPIRE) -> first map -> a model trained on it "
                 f"({args.volume_epochs} epochs at {args.volume_image_size} px; inside "
                 "run_ab_initio, so in its time)")
    elif args.model:
        model, meta = model_io.load_distance_model(args.model)
        meta.setdefault("image_size", model.input_shape[1])
        label = f"{args.model} ({args.model_label or 'training data not stated'})"
        train_s = 0.0
    else:
        model, meta, label = same_protein_model(big, voxel, args, log)
        train_s = time.perf_counter() - t
    weights = None if model is None else model.get_weights()

    rows = []
    truth = score(images, px, ctfs, sim["quaternions"], sim["shifts"], sim, vol, mask_radius)
    rows.append(("true orientations and offsets", truth, None, 0.0))
    for name, levers in (NO_MODEL_ROWS if args.no_model else ROWS):
        if model is not None:
            model.set_weights(weights)       # every row starts from the same model
        settings = abinitio.AbInitioSettings(
            diameter_A=diameter_A, n_subset=args.subset, max_iterations=args.iterations,
            max_shift=args.max_shift * args.size / args.box + 1,
            refine_iterations=args.refine_iterations,
            fine_tune_particles=args.fine_tune_particles,
            fine_tune_epochs=args.fine_tune_epochs, n_threads=args.threads, seed=args.seed,
            common_lines_classes=args.classes, volume_epochs=args.volume_epochs,
            volume_image_size=args.volume_image_size, **levers)
        t = time.perf_counter()
        res = abinitio.run_ab_initio(images, px, model, meta, settings, ctf=params, log=log)
        seconds = time.perf_counter() - t
        if args.figures:
            tag = name.strip("+ ").replace(" + ", "_").replace(" ", "_")
            save_figures(args.figures, ("nomap_" if args.no_model else "") + tag, res, px)
        if args.no_model:
            first = res.history[0]
            training = sum(r.get("volume_training_seconds", 0.0) for r in res.history)
            name = (f"{name} (common lines {first['common_lines_seconds']:.0f} s, models "
                    f"{training:.0f} s)")
        rows.append((name, score(images, px, ctfs, res.quaternions, res.shifts, sim, vol,
                                 mask_radius), res, seconds))
        log(f"{name}: {rows[-1][1]}, half-map FSC0.143 {res.resolution:.1f} A, {seconds:.0f} s")

    smoke = "[SMOKE RUN: tiny settings, the numbers mean nothing] " if args.smoke else ""
    lines = [f"### {smoke}ab initio ablation: 5j0n, {args.n} particles at {args.size} px "
             f"({px:.2f} A/px; noise sigma^2 {args.sigma2:g}, CTF 1-3 um and offsets <= "
             f"{args.max_shift:g} px at {args.box} px, then downsampled, as "
             "benchmarks/paper.py)", "",
             "| run | median error (rad, rotation + hand) | median offset error (px) | "
             "FSC0.5 vs true map (A) | half-map FSC0.143 (A) | iterations | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, s, res, seconds in rows:
        lines.append(f"| {name} | {s['median_error']:.3f} | {s['median_shift_error']:.2f} | "
                     f"{s['fsc05']:.1f} | "
                     + (f"{res.resolution:.1f} | {res.best_iteration} of "
                        f"{max(r['iteration'] for r in res.history)} | {seconds:.0f} |"
                        if res is not None else "- | - | - |"))
    lines += ["", f"- model: {label}" + (f"; training {train_s:.0f} s" if train_s else ""),
              "- errors, offsets and FSC vs the true map use the truth only to score (global "
              "rotation, hand and frame translation fitted); the half-map FSC is what a user "
              "sees",
              ] + run.footer() + [""]
    write_report("\n".join(lines), args.out)
    return rows


if __name__ == "__main__":
    main()
