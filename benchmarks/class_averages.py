"""The first map of ab initio with no model and no map: how good are its class averages?

``common_lines_map`` (what the ab initio protocol runs when it has neither a model nor an
initial volume) classifies the particles by view with ASPIRE, averages ``--classes``
classes and orients the averages by common lines. This script runs it, as the protocol
does, on particles simulated as in ``benchmarks/unseen.py`` (the unseen test proteins
made from atoms with gemmi, or the 5j0n map; CTF defocus 1-3 um, offsets up to
``--max-shift`` px, noise ``sigma2``), once per way of choosing the classes
(``CommonLinesSettings.selection``), and scores it with the truth: the median error of
each average's orientation against that of the particle it is centred on (rotation and
hand fitted; random: 2.31 rad), and the correlation with the true map of the averages
inverted in the truth's frame.

Usage::

    python benchmarks/class_averages.py                          # adk_open, 5j0n; sigma^2 0, 16
    python benchmarks/class_averages.py --proteins adk_open --sigma2 16 --selection compact
    python benchmarks/class_averages.py --smoke                  # tiny, checks the script
"""
import argparse
import sys
import time

from orientlearn.benchmarking import (
    BenchmarkRun,
    score_class_averages,
    unseen_protein_maps,
    write_report,
)
from orientlearn.core import common_lines_map, simulation


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--proteins", nargs="+", default=["adk_open", "5j0n"],
                   help="test proteins (benchmarking.ATOMIC_TEST_PROTEINS names, or 5j0n)")
    p.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 16.0])
    p.add_argument("--selection", nargs="+", default=list(common_lines_map.CLASS_SELECTIONS),
                   choices=common_lines_map.CLASS_SELECTIONS)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--box", type=int, default=64, help="particle box (px)")
    p.add_argument("--max-shift", type=float, default=4.0, help="offsets (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--smoke", action="store_true", help="tiny run that checks the script")
    args = p.parse_args(argv)
    if args.smoke:
        args.proteins, args.sigma2, args.box = ["5j0n"], [0.0], 32
        args.particles, args.classes = 300, 20
    return args


def run_row(name, vol, px, diameter, sigma2, selection, args):
    """``common_lines_map`` on particles of ``vol`` with one class selection; a dict."""
    sim = simulation.simulate_particles(
        vol, args.particles, max_shift=args.max_shift, voxel_size=px,
        ctf=dict(defocus_range=(1e4, 3e4)), sigma2=sigma2 or None, seed=args.seed,
        return_clean=False)
    settings = common_lines_map.CommonLinesSettings(n_classes=args.classes,
                                                    selection=selection, seed=args.seed)
    t = time.perf_counter()
    _, info = common_lines_map.common_lines_map(sim["images"], px, diameter, ctf=sim["ctf"],
                                                settings=settings)
    seconds = time.perf_counter() - t
    err, cc = score_class_averages(info, sim["quaternions"], vol, px, diameter, settings)
    return dict(name=name, diameter=diameter, px=px, sigma2=sigma2, selection=selection,
                err=err, cc=cc, seconds=seconds)


def report(rows, args, run):
    smoke = "[SMOKE RUN: tiny settings, the numbers mean nothing] " if args.smoke else ""
    lines = [f"### {smoke}Class averages of the no-map start (`common_lines_map`): "
             f"{args.particles} particles, {args.box} px, CTF 1-3 um, offsets <= "
             f"{args.max_shift:g} px; {args.classes} averages of 10 particles", "",
             "| protein | sigma^2 | classes averaged | median error of the averages (rad) | "
             "first map in the truth's frame: correlation with the true map | time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} ({r['diameter']:.0f} A, {r['px']:.2f} A/px) | "
                     f"{r['sigma2']:g} | {r['selection']} | {r['err']:.3f} | "
                     f"{r['cc']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "- 'compact': the classes with the smallest mean distance to their "
              "neighbours in ASPIRE's rotationally invariant features (DistanceClassSelector, "
              "the default); 'first': the classes of the first particles (ASPIRE's debug "
              "source, the earlier default)",
              "- errors after the best global rotation and hand (random: 2.31 rad); the truth "
              f"only scores; seed {args.seed}"] + run.footer() + [""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("class_averages.py", argv)
    rows = []
    for name, vol, px, diameter in unseen_protein_maps(args.box, args.proteins):
        for sigma2 in args.sigma2:
            for selection in args.selection:
                rows.append(run_row(name, vol, px, diameter, sigma2, selection, args))
                r = rows[-1]
                print(f"{name} sigma2 {sigma2:g} {selection}: {r['err']:.3f} rad, "
                      f"cc {r['cc']:.3f}, {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    text = report(rows, args, run)
    write_report(text, args.out)
    return rows


if __name__ == "__main__":
    main()
