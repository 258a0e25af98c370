"""Orientations of proteins a model never saw: the generalist on the test proteins.

For each test protein (the bundled 5j0n map; adk_open, 1osm, 1a28, 19hc, 4E43, 1hvr from
the mdanalysistests package, made into maps with gemmi), simulate particles as a user
would have them (CTF with defocus 1-3 um, shifts <= 4 px, box ``--user-box`` with the
particle spanning half of it) at each noise level, then recover their orientations with
each model given (``--model``, and ``--baseline`` models such as a 5j0n-only model):
scale by the particle diameter -> embed (8 detector transforms) -> recover, the path of
``generalist.orient_particles``. The only input besides the images is the particle
diameter (what a user types as the mask diameter): the atoms' extent, or for 5j0n the
map's support. Errors are after the best global rotation + handedness (no other
ground-truth help); random orientations give a median of 2.31 rad. Prints a table with
the command, machine, date and commit.

``--abinitio`` runs the ab initio protocol's call instead (``abinitio.run_ab_initio``
with neither a model nor a map: class averages + common lines (ASPIRE) -> a first map ->
a model trained on it -> recovery -> local refinement; issue 14's rows): besides the
errors, the median offset error and FSC 0.5 against the true map of the map its
orientations and offsets give (truth used only to score), next to the FSC 0.5 of the
true orientations and offsets.

    PYTHONPATH=. python benchmarks/unseen.py --model G.keras --baseline B.keras \\
        --particles 500 --sigma2 0 16
    PYTHONPATH=. python benchmarks/unseen.py --abinitio --only adk_open --sigma2 16
"""
import argparse
import os
import time

from orientlearn.benchmarking import (
    BenchmarkRun,
    ctf_stack,
    score_against_truth,
    unseen_protein_maps,
    write_report,
)
from orientlearn.core import (
    abinitio,
    alignment,
    generalist,
    model_io,
    simulation,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="the generalist (.keras); required without --abinitio")
    p.add_argument("--abinitio", action="store_true",
                   help="ab initio with no model and no map (common-lines start)")
    p.add_argument("--subset", type=int, default=2000,
                   help="--abinitio: particles in the loop (the protocol's default)")
    p.add_argument("--threads", type=int, default=None, help="--abinitio")
    p.add_argument("--classes", type=int, default=200, help="--abinitio: class averages")
    p.add_argument("--volume-epochs", type=int, default=60,
                   help="--abinitio: epochs of the model trained on the first map")
    p.add_argument("--baseline", nargs="*", default=[], help="other models to compare")
    p.add_argument("--particles", type=int, default=5000, help="per protein and noise level")
    p.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 16.0])
    p.add_argument("--user-box", type=int, default=64, help="box of the simulated particles")
    p.add_argument("--max-shift", type=float, default=4.0, help="px of the user's box")
    p.add_argument("--only", nargs="*", default=None, help="names of test proteins")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: 40 noiseless particles of adk_open")
    args = p.parse_args(argv)
    if args.smoke:
        args.particles, args.sigma2, args.only = 40, [0.0], ["adk_open"]
        if args.abinitio:       # the 2-D classification needs ~300 particles at 64 px
            args.particles, args.user_box, args.subset = 160, 32, 0
            args.classes, args.volume_epochs = 20, 1
    if not args.abinitio and not args.model:
        p.error("--model is required (or --abinitio)")
    return args


def abinitio_row(name, sim, vol, pixel_size, diameter, args):
    """The ab initio protocol's call on ``sim``'s particles, scored against the truth."""
    settings = abinitio.AbInitioSettings(diameter_A=diameter, n_subset=args.subset,
                                         max_shift=args.max_shift + 1,
                                         common_lines_classes=args.classes,
                                         volume_epochs=args.volume_epochs,
                                         n_threads=args.threads, seed=args.seed)
    t0 = time.perf_counter()
    res = abinitio.run_ab_initio(sim["images"], pixel_size, None, None, settings,
                                 ctf=sim["ctf"], log=lambda line: print(line, flush=True))
    dt = time.perf_counter() - t0
    size = sim["images"].shape[-1]
    ctfs = ctf_stack(sim["ctf"], size, pixel_size)
    radius = min(size / 2 - 2, diameter / pixel_size / 2 + 4)
    ours = score_against_truth(sim["images"], pixel_size, ctfs, res.quaternions, res.shifts,
                               sim["quaternions"], sim["shifts"], vol, radius)
    truth = score_against_truth(sim["images"], pixel_size, ctfs, sim["quaternions"],
                                sim["shifts"], sim["quaternions"], sim["shifts"], vol, radius)
    first = res.history[0]
    rounds = sum(r["stage"] == "recover" for r in res.history)
    return dict(ours, truth_fsc05=truth["fsc05"], seconds=dt, half=float(res.resolution),
                common_lines_s=first.get("common_lines_seconds", 0.0),
                training_s=sum(r.get("volume_training_seconds", 0.0) for r in res.history),
                rounds=f"{res.best_iteration} of {rounds}")


def abinitio_report(rows, args, run):
    lines = [
        "# Ab initio on unseen proteins (benchmarks/unseen.py --abinitio)", "",
        (f"{args.particles} particles per protein and noise level ({args.subset or 'all'} in "
         f"the loop), box {args.user_box} px (particle diameter half the box), CTF defocus "
         f"1-3 um, offsets <= {args.max_shift:g} px; no model, no map: class averages + "
         "common lines (ASPIRE) -> first map -> model trained on it -> recovery -> local "
         "refinement, then rounds with the model retrained on the refined map "
         "(abinitio.run_ab_initio with its defaults, the protocol's call). Errors after "
         "rotation + handedness (random: median 2.31 rad); the truth only scores"),
        "", "| protein | sigma^2 | median error (rad) | mean error (rad) | median offset "
        "error (px) | FSC0.5 vs true map (A) | same, true orientations + offsets (A) | "
        "half-map FSC0.143 (A) | round kept | time (s): all / common lines / model "
        "training |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, sigma2, diam, px, r in rows:
        lines.append(f"| {name} ({diam:.0f} A, {px:.2f} A/px) | {sigma2:g} | "
                     f"**{r['median_error']:.3f}** | {r['mean_error']:.3f} | "
                     f"{r['median_shift_error']:.2f} | {r['fsc05']:.1f} | "
                     f"{r['truth_fsc05']:.1f} | {r['half']:.1f} | {r['rounds']} | "
                     f"{r['seconds']:.0f} / "
                     f"{r['common_lines_s']:.0f} / {r['training_s']:.0f} |")
    return "\n".join(lines + ["", *run.footer()]) + "\n"


def label(path, meta):
    kind = meta.get("kind", "model")
    n = len(meta.get("training_proteins", []))
    trained = meta["training_proteins"][0] if n == 1 else f"{n} dssp chains"
    return f"{os.path.basename(path)} ({kind}, trained on {trained})"


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("unseen.py", argv, tensorflow=True)
    models = [] if args.abinitio else [(p, *model_io.load_distance_model(p))
                                       for p in [args.model, *args.baseline]]
    maps = unseen_protein_maps(args.user_box, args.only)
    rows = []
    for name, vol, pixel_size, diameter in maps:
        for sigma2 in args.sigma2:
            sim = simulation.simulate_particles(
                vol, args.particles, max_shift=args.max_shift, voxel_size=pixel_size,
                ctf=dict(defocus_range=(1e4, 3e4)), sigma2=sigma2 or None, seed=args.seed,
                return_clean=False)
            if args.abinitio:
                r = abinitio_row(name, sim, vol, pixel_size, diameter, args)
                rows.append((name, sigma2, diameter, pixel_size, r))
                print(f"{name:12s} sigma2={sigma2:g} ab initio: {r}", flush=True)
                write_report(abinitio_report(rows, args, run), args.out)
                continue
            for path, model, meta in models:
                t0 = time.perf_counter()
                q, _ = generalist.orient_particles(model, meta, sim["images"], pixel_size,
                                                   diameter, ctf=sim["ctf"], seed=args.seed)
                dt = time.perf_counter() - t0
                cmp = alignment.compare_orientations(sim["quaternions"], q)
                rows.append((name, sigma2, label(path, meta), cmp["rot_median"],
                             cmp["rot_mean"], dt, pixel_size, diameter))
                print(f"{name:12s} sigma2={sigma2:g} {os.path.basename(path)}: median "
                      f"{cmp['rot_median']:.3f} rad, mean {cmp['rot_mean']:.3f} rad, "
                      f"{dt:.1f} s", flush=True)
    if args.abinitio:
        return 0
    lines = [
        "# Orientations of unseen proteins (benchmarks/unseen.py)", "",
        (f"{args.particles} particles per protein and noise level, box {args.user_box} px "
         "(particle diameter half the box), CTF defocus 1-3 um, shifts <= "
         f"{args.max_shift:g} px; error after rotation + handedness (random: median "
         "2.31 rad)"),
        "", "| protein | sigma^2 | model | median (rad) | mean (rad) | time (s) |",
        "|---|---|---|---|---|---|"]
    for name, sigma2, lab, med, mean, dt, px, diam in rows:
        lines.append(f"| {name} ({diam:.0f} A, {px:.2f} A/px) | {sigma2:g} | {lab} | "
                     f"{med:.3f} | {mean:.3f} | {dt:.1f} |")
    lines += ["", *run.footer()]
    write_report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
