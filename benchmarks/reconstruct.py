"""Direct Fourier reconstruction on the CPU: time, memory and resolution on 5j0n.

Per particle count (``--sizes``): project the 5j0n map (zero-padded to ``--box`` px at
3.667 A/px, as in ``benchmarks/paper.py``) in uniformly random orientations with
``projection.project`` (timed as "simulate"), reconstruct with
``reconstruction.reconstruct_fourier`` from the true orientations (timed as "reconstruct":
the number the target is about, 5,000 particles at 116 px in under 60 s on 2 CPU
cores), then reconstruct again from orientations perturbed by a random rotation of
exactly ``--perturb`` degrees per particle (random axis, seeded) and from two random
halves of the particles, and compute FSC0.5 / FSC0.143 against the true map (and
between the halves). Each particle count runs in its own process, so the peak RSS of
one does not hide in another's. Prints one markdown table (columns: particle counts).

Images are noiseless by default (``--sigma2`` adds white noise relative to
unit-variance clean images, as ``simulation.simulate_particles`` does); then, with true
orientations, the resolution is limited by the box: a value shown as "(Nyquist)" means
the FSC never dropped below the threshold.

Usage::

    python benchmarks/reconstruct.py                     # 5,000 and 50,000 at 116 px
    python benchmarks/reconstruct.py --sizes 5000 --perturb 0 10 --out rec.md
    python benchmarks/reconstruct.py --smoke             # tiny (200 at 32 px), seconds
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from orientlearn.benchmarking import (
    MAP_PATH,
    REPO,
    BenchmarkRun,
    peak_rss_mb,
    support_radius,
    volume_at_size,
    write_report,
)
from orientlearn.core import fsc, geometry, projection, reconstruction
from orientlearn.core.progress import ProgressReporter
from orientlearn.core.threads import thread_count

#: The target: this many particles at this box reconstructed in under this many seconds.
TARGET = dict(particles=5000, box=116, seconds=60.0)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def perturb_orientations(quats, angle, axes):
    """``q' = p q`` with ``p`` the rotation by ``angle`` (radians) about ``axes`` (M, 3).

    The geodesic distance ``d_q(q, q')`` is ``angle`` for every particle."""
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    p = np.concatenate([np.full((len(axes), 1), np.cos(angle / 2)),
                        np.sin(angle / 2) * axes], axis=1)
    return geometry.multiply(p, quats)


def simulate(true_map, n, seed, sigma2, chunk):
    """``n`` projections of ``true_map`` in random orientations, float32 ``(n, N, N)``.

    ``projection.project`` writes straight into one preallocated array (no full-size
    temporaries); clean images are scaled to unit variance on average and, if
    ``sigma2``, white Gaussian noise of that variance is added, chunk by chunk."""
    if not isinstance(seed, np.random.SeedSequence):
        seed = np.random.SeedSequence(seed)
    s_orient, s_noise = seed.spawn(2)
    quats = geometry.sample_orientations(n, seed=int(s_orient.generate_state(1)[0]))
    size = true_map.shape[0]
    spec = projection.prepare_volume(true_map)
    images = np.empty((n, size, size), dtype=np.float32)
    report = ProgressReporter(log, "  simulate", "images", interval=10.0)
    for b0 in range(0, n, chunk):
        b1 = min(n, b0 + chunk)
        projection.project(spec, quats[b0:b1], out=images[b0:b1])
        report(b1, n)
    del spec
    var = sum(float(np.var(images[b0:b0 + chunk], axis=(1, 2), dtype=np.float64).sum())
              for b0 in range(0, n, chunk)) / n
    scale = np.float32(1.0 / np.sqrt(var)) if var > 0 else np.float32(1.0)
    rng = np.random.default_rng(s_noise)
    for b0 in range(0, n, chunk):
        block = images[b0:b0 + chunk]
        block *= scale
        if sigma2:
            block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(
                np.sqrt(sigma2))
    return images, quats


def resolutions(freq, values):
    """FSC0.5 and FSC0.143 (A) and whether each is the Nyquist bound (never crossed)."""
    nyquist = 1.0 / np.max(freq)
    out = {}
    for key, threshold in (("fsc05", 0.5), ("fsc0143", 0.143)):
        r = fsc.resolution_at(freq, values, threshold)
        out[key] = r
        out[key + "_nyquist"] = bool(np.isclose(r, nyquist))
    return out


def run_size(args, n):
    """One particle count, all steps (run in its own process). Returns a dict."""
    res = dict(n=n)
    true_map, pixel_size = volume_at_size(args.box, args.map)
    seeds = np.random.SeedSequence([args.seed, n]).spawn(3)   # simulate, perturb, halves
    t = time.perf_counter()
    images, quats = simulate(true_map, n, seeds[0], args.sigma2, args.chunk)
    res["time_simulate"] = time.perf_counter() - t
    res["rss_simulate"] = peak_rss_mb()
    res["images_mb"] = images.nbytes / 2 ** 20
    log(f"  simulated {n} particles in {res['time_simulate']:.1f} s")

    mask_radius = min(args.box / 2 - 1, support_radius(true_map) + 2)
    res["mask_radius"] = mask_radius
    recon = dict(mask_radius=mask_radius, n_threads=args.threads)

    def rebuild(label, imgs, orientations):
        report = ProgressReporter(log, f"  reconstruct ({label})", "images", interval=10.0)
        return reconstruction.reconstruct_fourier(imgs, orientations, progress=report, **recon)

    t = time.perf_counter()
    vol = rebuild("true orientations", images, quats)
    res["time_reconstruct"] = time.perf_counter() - t
    res["rss_reconstruct"] = peak_rss_mb()
    log(f"  reconstructed {n} particles in {res['time_reconstruct']:.1f} s")
    res_vs_truth = {}
    res_vs_truth["0"] = resolutions(*fsc.fsc(vol, true_map, pixel_size))
    del vol

    t = time.perf_counter()
    axes = np.random.default_rng(seeds[1]).standard_normal((n, 3))
    for deg in args.perturb:
        if deg == 0:
            continue
        q = perturb_orientations(quats, np.radians(deg), axes)
        vol = rebuild(f"{deg:g} deg perturbed", images, q)
        res_vs_truth[f"{deg:g}"] = resolutions(*fsc.fsc(vol, true_map, pixel_size))
        del vol
    res["time_perturbed"] = time.perf_counter() - t
    res["fsc"] = res_vs_truth

    if not args.no_half_maps:
        t = time.perf_counter()
        _, _, freq, values = fsc.half_map_fsc(
            images, quats, pixel_size=pixel_size, seed=int(seeds[2].generate_state(1)[0]),
            progress=ProgressReporter(log, "  reconstruct (half maps)", "images", 10.0),
            **recon)
        res["half"] = resolutions(freq, values)
        res["time_half"] = time.perf_counter() - t
    res["rss_all"] = peak_rss_mb()
    res["pixel_size"] = pixel_size
    return res


def fmt_res(r, key):
    value = r[key]
    if not np.isfinite(value):
        return "inf"
    return f"{value:.1f}" + (" (Nyquist)" if r[key + "_nyquist"] else "")


def build_table(args, results):
    cols = [f"{r['n']:,} particles" for r in results]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    row("images in memory (MB)", lambda r: f"{r['images_mb']:.0f}")
    row("time simulate (s)", lambda r: f"{r['time_simulate']:.1f}")
    row("time reconstruct, true orientations (s)", lambda r: f"{r['time_reconstruct']:.1f}")
    row("reconstruct rate (particles/s)", lambda r: f"{r['n'] / r['time_reconstruct']:.0f}")
    row("peak RSS after simulate (MB)", lambda r: f"{r['rss_simulate']:.0f}")
    row("peak RSS after reconstruct (MB)", lambda r: f"{r['rss_reconstruct']:.0f}")
    for deg in ["0"] + [f"{d:g}" for d in args.perturb if d != 0]:
        what = "true orientations" if deg == "0" else f"{deg}° perturbed"
        row(f"FSC0.5 vs true map, {what} (Å)", lambda r: fmt_res(r["fsc"][deg], "fsc05"))
        row(f"FSC0.143 vs true map, {what} (Å)", lambda r: fmt_res(r["fsc"][deg], "fsc0143"))
    if not args.no_half_maps:
        row("FSC0.5 half maps, true orientations (Å)", lambda r: fmt_res(r["half"], "fsc05"))
        row("FSC0.143 half maps, true orientations (Å)",
            lambda r: fmt_res(r["half"], "fsc0143"))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000],
                    help="particle counts, one column each")
    ap.add_argument("--box", type=int, default=116, help="image box (px); the map is "
                    "zero-padded to it (3.667 A/px) or downsampled if smaller")
    ap.add_argument("--perturb", type=float, nargs="+", default=[0.0, 5.0, 10.0, 15.0],
                    help="orientation errors (degrees), one random rotation of exactly "
                    "that angle per particle; the true orientations (0) are always done")
    ap.add_argument("--sigma2", type=float, default=0.0,
                    help="noise variance relative to unit-variance clean images (0: none)")
    ap.add_argument("--no-half-maps", action="store_true", help="skip the half-map FSC")
    ap.add_argument("--threads", type=int, default=None,
                    help="reconstruct_fourier n_threads (default: its own choice)")
    ap.add_argument("--chunk", type=int, default=2000,
                    help="particles projected per chunk in the simulation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--map", default=MAP_PATH)
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run (200 particles at 32 px): checks the script, seconds")
    ap.add_argument("--in-process", action="store_true",
                    help="run every size in this process (peak RSS then accumulates)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.box = [200], 32
    return args


def run_in_child(argv, n):
    """Run one size in a fresh interpreter (its own peak RSS); returns its result dict."""
    cmd = [sys.executable, os.path.abspath(__file__)] + list(argv) + ["--worker", str(n)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"benchmarks/reconstruct.py: the run for {n} particles failed "
                 f"(exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_size(args, args.worker)))
        return 0
    run = BenchmarkRun("reconstruct.py", argv)
    results = []
    for n in args.sizes:
        log(f"{n} particles, box {args.box}")
        results.append(run_size(args, n) if args.in_process else run_in_child(argv, n))

    pixel_size = results[0]["pixel_size"]
    threads = thread_count(args.threads, reconstruction.MAX_DEFAULT_THREADS)
    header = (f"## orientlearn reconstruction benchmark: 5j0n, {args.box} px at "
              f"{pixel_size:.3f} Å/px, reconstruct_fourier (CPU)"
              + (f", noise σ²={args.sigma2:g}" if args.sigma2 else ", noiseless")
              + (" [SMOKE RUN: numbers meaningless]" if args.smoke else ""))
    notes = [""]
    target = [r for r in results if r["n"] == TARGET["particles"]]
    if target and args.box == TARGET["box"]:
        t = target[0]["time_reconstruct"]
        notes.append(f"- target: {TARGET['particles']:,} particles at {TARGET['box']} px "
                     f"reconstructed in < {TARGET['seconds']:.0f} s on 2 CPU cores: "
                     f"{'met' if t < TARGET['seconds'] else 'NOT met'} ({t:.1f} s, "
                     f"{threads} threads)")
    notes += [
        "- simulate: projection.project (Fourier slice, oversampling 2, interleaved) in "
        "uniformly random orientations, scaled to unit variance"
        + (f", white noise σ²={args.sigma2:g}" if args.sigma2 else ", no noise")
        + "; no CTF, no shifts",
        f"- reconstruct: reconstruct_fourier(images, orientations, mask_radius="
        f"{results[0]['mask_radius']:.1f}, n_threads={threads}), oversampling 2; time and "
        "peak RSS are for the true-orientation reconstruction (images already in memory; "
        "each particle count in its own process)"
        + (" [--in-process: peak RSS accumulates across columns]" if args.in_process else ""),
        "- FSC vs the true map (fsc.fsc, resolution_at); perturbed: each particle's "
        "orientation rotated by exactly that angle about a random axis (seeded, same axes "
        "for every angle); half maps: fsc.half_map_fsc, two random halves; "
        "\"(Nyquist)\": the curve never crossed the threshold",
        *run.footer(peak_rss=False, date_extra=f"seed {args.seed}; peak RSS over all runs: "
                    f"{max(r['rss_all'] for r in results):.0f} MB"),
    ]
    text = "\n".join([header, "", build_table(args, results)] + notes) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
