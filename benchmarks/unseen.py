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

    PYTHONPATH=. python benchmarks/unseen.py --model G.keras --baseline B.keras \\
        --particles 500 --sigma2 0 16
"""
import argparse
import os
import time

import numpy as np

from orientlearn.benchmarking import MAP_PATH as MAP_5J0N
from orientlearn.benchmarking import BenchmarkRun, write_report
from orientlearn.core import alignment, atoms, generalist, model_io, simulation, volumes

ATOMIC_TEST_PROTEINS = ("adk_open.pdb", "1osm.pdb.gz", "1a28.pdb.gz", "19hc.pdb.gz",
                        "4E43.pdb", "1hvr.pdb")


def mdanalysis_data():
    import MDAnalysisTests
    return os.path.join(os.path.dirname(MDAnalysisTests.__file__), "data")


def support_diameter_A(volume, voxel_size, rel=0.05):
    """Diameter (A) of the sphere about the box centre holding the voxels above ``rel``
    of the maximum: what a user reads off a map to set the mask diameter."""
    n = volume.shape[0]
    z, y, x = np.nonzero(volume > rel * volume.max())
    r = np.sqrt((z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2).max()
    return 2.0 * (r + 0.5) * voxel_size


def test_maps(user_box):
    """``[(name, volume (B, B, B), voxel_size, diameter_A)]`` at the users' settings."""
    out = []
    vol, voxel = volumes.read_volume(MAP_5J0N)
    diameter = support_diameter_A(vol, voxel)
    n = vol.shape[0]
    out.append(("5j0n (map)", volumes.downsample_volume(vol, user_box), voxel * n / user_box,
                diameter))
    for f in ATOMIC_TEST_PROTEINS:
        st = atoms.read_structure(os.path.join(mdanalysis_data(), f))
        _, radius = atoms.molecule_extent(st)
        diameter = 2.0 * radius
        pixel_size = diameter / (0.5 * user_box)
        m = atoms.structure_to_map(st, pixel_size, box=user_box)
        out.append((f.split(".")[0], m.volume, pixel_size, diameter))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the generalist (.keras)")
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
    return args


def label(path, meta):
    kind = meta.get("kind", "model")
    n = len(meta.get("training_proteins", []))
    trained = meta["training_proteins"][0] if n == 1 else f"{n} dssp chains"
    return f"{os.path.basename(path)} ({kind}, trained on {trained})"


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("unseen.py", argv, tensorflow=True)
    models = [(p, *model_io.load_distance_model(p)) for p in [args.model, *args.baseline]]
    maps = test_maps(args.user_box)
    if args.only:
        maps = [m for m in maps if m[0].split(" ")[0] in args.only]
    rows = []
    for name, vol, pixel_size, diameter in maps:
        for sigma2 in args.sigma2:
            sim = simulation.simulate_particles(
                vol, args.particles, max_shift=args.max_shift, voxel_size=pixel_size,
                ctf=dict(defocus_range=(1e4, 3e4)), sigma2=sigma2 or None, seed=args.seed,
                return_clean=False)
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
