"""Local refinement alone, on the paper's test particles (5j0n, 116 px, CTF, shifts).

The particles are those of ``benchmarks/paper.py --ctf-shifts`` (the same simulation:
5,000 particles, seed 0; the last 1,650 are the test set). The refinement starts where
recovery leaves a user: orientations a few degrees off, in their own frame, and no
offsets. Here the start is made from the truth to a chosen quality, so the refinement
step can be measured apart from the network's training (which ``paper.py --ctf-shifts``
measures end to end): each orientation is turned by a random rotation whose angle has
median ``--start-error`` rad (Maxwell distributed, as errors spread over three axes),
a fraction ``--outliers`` gets a random orientation instead, and the whole set is
rotated by one random global rotation (recovered orientations live in their own frame).
The offsets start at zero (``--start-shifts zero``, as picked) or at the reference-free
centre of mass (``com``). The refinement is ``pipeline.refine_particles`` (what the
refine protocol runs); no true offset or orientation reaches it.

Errors afterwards: orientations after rotation + handedness alignment, offsets after the
3-D translation of the frame (a map's origin is arbitrary: ``fit_frame_translation``),
and the FSC against the true map of the refined particles' map moved into the true frame.
The reference row reconstructs the same particles with their true orientations and
offsets.

Usage::

    python benchmarks/refine.py                         # sigma^2 = 16 and 64
    python benchmarks/refine.py --sigma2 16 --out refine.md
    python benchmarks/refine.py --smoke
"""
import argparse
import sys
import time

import numpy as np
from scipy.spatial.transform import Rotation

from orientlearn.benchmarking import BenchmarkRun, support_radius, volume_at_size, write_report
from orientlearn.core import (
    alignment,
    alignment_search,
    centering,
    ctf,
    fsc,
    geometry,
    pipeline,
    reconstruction,
    refinement,
    simulation,
)
from orientlearn.core.source import ArraySource


def perturbed_start(q_true, median_error, outliers, seed):
    """Orientations off by rotations of median angle ``median_error`` (rad), a fraction
    ``outliers`` replaced by random ones, all in a random global frame: ``(M, 4)``."""
    rng = np.random.default_rng(seed)
    m = len(q_true)
    sigma = median_error / 1.5382          # median of a Maxwell(sigma) distribution
    turn = Rotation.from_rotvec(rng.normal(size=(m, 3)) * sigma).as_matrix()
    R = turn @ geometry.quaternion_to_matrix(q_true)
    bad = rng.random(m) < outliers
    R[bad] = geometry.quaternion_to_matrix(geometry.uniform_quaternions(int(bad.sum()),
                                                                        seed=seed + 1))
    frame = Rotation.random(random_state=seed + 2).as_matrix()
    return geometry.matrix_to_quaternion(R @ frame)      # object-side frame change


def run_setting(args, sigma2, true_map, pixel_size, log):
    res = {}
    sim = simulation.simulate_particles(true_map, args.n_particles, sigma2=sigma2 or None,
                                        seed=args.seed, voxel_size=pixel_size, ctf=True,
                                        max_shift=args.max_shift, return_clean=False)
    test = slice(args.n_particles - args.n_test, args.n_particles)
    images = sim["images"][test]
    q_true, t_true = sim["quaternions"][test], sim["shifts"][test]
    p = sim["ctf"]
    ctf_params = {k: (np.asarray(v)[test] if k in ("defocus_u", "defocus_v", "astig_angle")
                      else v) for k, v in p.items()}
    mask_radius = min(true_map.shape[0] / 2 - 1, support_radius(true_map) + 2)

    def ctfs(idx, size):
        return ctf.ctf_2d_batch(size, pixel_size, ctf_params["defocus_u"][idx],
                                ctf_params["defocus_v"][idx], ctf_params["astig_angle"][idx],
                                voltage=p["voltage"], cs=p["cs"],
                                amplitude_contrast=p["amplitude_contrast"],
                                phase_shift=p["phase_shift"])

    def map_fsc05(q_aligned, shifts):
        vol = reconstruction.reconstruct_fourier(images, q_aligned, shifts=shifts, ctfs=ctfs,
                                                 mask_radius=mask_radius)
        freq, values, _ = fsc.fsc_with_handedness(vol, true_map, pixel_size)
        return fsc.resolution_at(freq, values, 0.5), fsc.resolution_at(freq, values, 0.143)

    res["truth_fsc"] = map_fsc05(q_true, t_true)
    q_start = perturbed_start(q_true, args.start_error, args.outliers, args.seed)
    if args.start_shifts == "zero":
        t_start = np.zeros((len(images), 2))
    else:
        t_start, _ = centering.centre_particles(
            alignment_search.ParticleSpectra(images, pixel_size, ctf=ctf_params),
            args.shift_range, 2 * mask_radius)

    def errors(q, t):
        cmp = alignment.compare_orientations(q_true, q)
        c, err = alignment.fit_frame_translation(q, t, t_true)
        R = geometry.quaternion_to_matrix(q)
        in_true_frame = t - np.einsum("mij,j->mi", R[:, :2, :], c)
        return cmp["rot_median"], cmp["rot_mean"], float(np.median(err)), \
            map_fsc05(cmp["rot_aligned"], in_true_frame)

    res["before"] = errors(q_start, t_start)
    log(f"  start: E_OR median {res['before'][0]:.3f} rad, offsets {res['before'][2]:.2f} px, "
        f"FSC0.5 {res['before'][3][0]:.1f} A (truth {res['truth_fsc'][0]:.1f} A)")
    settings = refinement.RefinementSettings(mask_radius=mask_radius,
                                             shift_range=args.shift_range,
                                             max_iterations=args.iterations, seed=args.seed)
    source = ArraySource(images, pixel_size, quaternions=q_start, shifts=t_start,
                         ctf=ctf_params)
    wall, cpu = time.perf_counter(), time.process_time()
    result = pipeline.refine_particles(source, settings=settings, log=log)
    res["seconds"], res["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    res["iterations"] = len(result.history)
    res["half"] = (result.resolution_05, result.resolution)
    res["after"] = errors(result.quaternions, result.shifts)
    return res


def build_table(results):
    cols = [("noiseless" if not s2 else f"σ²={s2:g}", r) for s2, r in results]

    def row(label, cell):
        return f"| {label} | " + " | ".join(cell(r) for _, r in cols) + " |"

    def deg(v):
        return f"{v:.3f} ({np.degrees(v):.1f}°)"
    lines = ["| metric | " + " | ".join(c for c, _ in cols) + " |",
             "|---" * (len(cols) + 1) + "|",
             row("start: E_OR median / mean, rotation+handedness (rad)",
                 lambda r: f"{deg(r['before'][0])} / {deg(r['before'][1])}"),
             row("start: offsets, median error (px, after frame translation)",
                 lambda r: f"{r['before'][2]:.2f}"),
             row("start: FSC0.5 / FSC0.143 vs true map (Å)",
                 lambda r: f"{r['before'][3][0]:.1f} / {r['before'][3][1]:.1f}"),
             row("**refined: E_OR median** / mean (rad)",
                 lambda r: f"**{deg(r['after'][0])}** / {deg(r['after'][1])}"),
             row("**refined: offsets, median error (px)**", lambda r: f"**{r['after'][2]:.2f}**"),
             row("**refined: FSC0.5** / FSC0.143 vs true map (Å)",
                 lambda r: f"**{r['after'][3][0]:.1f}** / {r['after'][3][1]:.1f}"),
             row("true orientations + offsets: FSC0.5 / FSC0.143 vs true map (Å)",
                 lambda r: f"{r['truth_fsc'][0]:.1f} / {r['truth_fsc'][1]:.1f}"),
             row("refined FSC0.5 / true-orientation FSC0.5",
                 lambda r: f"{r['after'][3][0] / r['truth_fsc'][0]:.3f}"),
             row("refined: half-map FSC0.5 / FSC0.143 (Å, gold standard, no truth)",
                 lambda r: f"{r['half'][0]:.1f} / {r['half'][1]:.1f}"),
             row("refinement: iterations, wall / CPU time (s)",
                 lambda r: f"{r['iterations']}, {r['seconds']:.0f} / {r['cpu']:.0f}")]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sigma2", type=float, nargs="+", default=[16.0, 64.0])
    ap.add_argument("--n-particles", type=int, default=5000,
                    help="simulated as paper.py does; the last --n-test are refined")
    ap.add_argument("--n-test", type=int, default=1650)
    ap.add_argument("--size", type=int, default=116)
    ap.add_argument("--max-shift", type=float, default=4.0)
    ap.add_argument("--start-error", type=float, default=0.138,
                    help="median start error (rad); 0.138 is what recovery gave at σ²=16 "
                         "with CTF and shifts (README, paper benchmark)")
    ap.add_argument("--outliers", type=float, default=0.05,
                    help="fraction of particles starting at a random orientation")
    ap.add_argument("--start-shifts", choices=("zero", "com"), default="zero")
    ap.add_argument("--shift-range", type=float, default=9.0,
                    help="px searched by the first iteration")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true", help="tiny run, numbers meaningless")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_particles, args.n_test, args.size = 300, 200, 32
        args.max_shift, args.shift_range, args.iterations = 1.0, 2.0, 2
        args.sigma2 = args.sigma2[:1]
    return args


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("refine.py", argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    true_map, pixel_size = volume_at_size(args.size)
    results = []
    for s2 in args.sigma2:
        log(f"setting sigma2={s2:g}")
        results.append((s2, run_setting(args, s2, true_map, pixel_size, log)))
    header = (f"## orientlearn local refinement: 5j0n, {args.n_test} test particles of "
              f"{args.n_particles}, {args.size} px at {pixel_size:.3f} Å/px, CTF, offsets "
              f"≤ {args.max_shift:g} px" + (" [SMOKE RUN]" if args.smoke else ""))
    notes = ["", f"- start: truth turned by random rotations of median {args.start_error:g} "
             f"rad, {100 * args.outliers:g} % random, in a random global frame; offsets "
             f"{'zero' if args.start_shifts == 'zero' else 'from the centre of mass'}; "
             f"first offset search ±{args.shift_range:g} px; ≤ {args.iterations} iterations"]
    notes += run.footer()
    write_report("\n".join([header, "", build_table(results)] + notes) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
