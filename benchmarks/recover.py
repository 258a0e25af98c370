"""Scale benchmark of orientation recovery alone: time and memory for P particles.

Per size P (each in a fresh child process, so that its peak memory is its own): draw P
uniform orientations, make per-transform features from them (``quaternion_features``,
as ``orientlearn/tests/test_recovery.py`` does, under the 8 image-side transforms of
``graph.image_transforms()``), build the graph from the features
(``graph.build_graph``, which picks brute force or the inverted file by size), replace
each edge's estimate by the exact distance ``d_q(q_i, g_k q_j)`` plus Gaussian noise
(``--noise`` rad, clipped to ``[0, pi]``), weight the edges as ``recover_from_features``
does and run ``recovery.recover_orientations`` (spectral start, ambiguity check, Adam).
The embedding (a network) is not part of this benchmark.

Timed: graph (``build_graph``), init (spectral start + ambiguity check), optimisation
(Adam), total (their sum). Peak RSS is the child's high-water mark after the recovery
(before the evaluation); "start" is its resident memory just before the graph is built
(interpreter, numpy/scipy, truth, features). Then, untimed: the median orientation error
after ``alignment.align_rotation_handedness`` (a global object rotation + handedness:
the error without ground-truth help, what reconstruction sees) and after
``alignment.align_o4`` (the paper's number), and the recall of the graph's neighbour
search against brute force on ``--recall-queries`` random particles.

Usage::

    python benchmarks/recover.py                                # P = 5,000, 20,000, 100,000
    python benchmarks/recover.py --sizes 5000 20000 --noise 0.2 --out recover.md
    python benchmarks/recover.py --smoke                        # tiny, seconds
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from orientlearn.benchmarking import (
    REPO, BenchmarkRun, current_rss_mb, peak_rss_mb, write_report)
from orientlearn.core import alignment, geometry, graph, recovery

CHILD_FLAG = "--child-size"


def quaternion_features(q, transforms, dtype=np.float32):
    """Features ``(K, N, 16)`` whose angles are a monotone function of d_q (as in
    ``tests/test_recovery.py``): ``Q0 = q q^T - I/4`` of ``g_k q``, unit norm."""
    out = np.empty((len(transforms), len(q), 16), dtype)
    for k, g in enumerate(transforms):
        gq = geometry.multiply(g, q)
        Q0 = np.einsum("na,nb->nab", gq, gq) - np.eye(4) / 4
        out[k] = Q0.reshape(len(q), 16) / np.sqrt(0.75)
    return out


def neighbour_recall(features, edges, n_queries, seed=0, block=8):
    """Fraction of the exact ``n`` nearest ``(j, k)`` of ``n_queries`` random particles
    that the graph's neighbour edges contain (brute force for those particles only)."""
    K, N, _ = features.shape
    flat = features.reshape(K * N, -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    nb = ~edges.is_random
    n = int(np.bincount(edges.i[nb], minlength=N).max())
    found = (edges.k[nb] * N + edges.j[nb]).reshape(N, n)     # rows in particle order
    queries = np.random.default_rng(seed).choice(N, size=min(n_queries, N), replace=False)
    hits = 0
    for s in range(0, len(queries), block):
        rows = queries[s:s + block]
        sim = flat[rows] @ flat.T
        sim[np.arange(len(rows))[:, None], rows[:, None] + N * np.arange(K)[None]] = -np.inf
        exact = np.argpartition(-sim, n - 1, axis=1)[:, :n]
        hits += sum(len(np.intersect1d(exact[r], found[row])) for r, row in enumerate(rows))
    return hits / (len(queries) * n)


def run_size(P, args):
    """One size, in this process: returns a dict of the measurements."""
    log = lambda msg: print(f"[P={P}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    transforms, _ = graph.image_transforms()
    q_true = geometry.uniform_quaternions(P, seed=args.seed)
    features = quaternion_features(q_true, transforms)
    rss_start = current_rss_mb()
    log(f"features {features.shape}; building the graph")
    t0 = time.perf_counter()
    edges = graph.build_graph(features, n_neighbors=args.n_neighbors,
                                 n_random=args.n_random, seed=args.seed)
    t_graph = time.perf_counter() - t0
    log(f"graph: {edges!r}, {edges.search} search, {t_graph:.1f} s")
    d_true = geometry.distance(q_true[edges.i],
                               geometry.multiply(transforms[edges.k], q_true[edges.j]))
    noise = np.random.default_rng(args.seed + 1).standard_normal(len(edges))
    d_hat = np.clip(d_true + args.noise * noise, 0.0, np.pi)
    del d_true, noise
    weights = graph.edge_weights(d_hat, "gaussian", 1.0)

    def progress(done, total):
        if done % 100 == 0 or done == total:
            log(f"optimisation step {done}/{total}")

    q_est, info = recovery.recover_orientations(
        edges.i, edges.j, d_hat=d_hat, weights=weights, n_particles=P, k=edges.k,
        transforms=transforms, n_steps=args.n_steps, seed=args.seed, progress=progress,
        loss=args.loss, loss_scale=args.loss_scale)
    peak = peak_rss_mb()
    log(f"init {info['seconds_init']:.1f} s ({info.get('init')}), optimisation "
        f"{info['seconds_optimize']:.1f} s, {info['n_steps']} steps")
    rot_info, q_rot = alignment.align_rotation_handedness(q_true, q_est)
    err_rot = alignment.orientation_errors(q_true, q_rot)
    _, q_o4 = alignment.align_o4(q_true, q_est, rotation_info=rot_info)
    err_o4 = alignment.orientation_errors(q_true, q_o4)
    recall = neighbour_recall(features, edges, args.recall_queries, seed=args.seed)
    amb = info.get("ambiguity", {})
    return dict(P=P, search=edges.search, edges=len(edges), recall=recall,
                graph_s=t_graph, init_s=info["seconds_init"],
                optimize_s=info["seconds_optimize"],
                total_s=t_graph + info["seconds_init"] + info["seconds_optimize"],
                steps=int(info["n_steps"]), loss=float(info["loss"]), init=info.get("init"),
                ambiguity_left=[float(x) for x in amb.get("left", [])],
                ambiguity_conjugated=bool(amb.get("conjugated", False)),
                peak_rss_mb=peak, start_rss_mb=rss_start,
                median_rot=float(np.median(err_rot)), median_o4=float(np.median(err_o4)),
                mean_rot=float(np.mean(err_rot)))


def run_child(P, args):
    """Run one size in a fresh interpreter; returns its result dict."""
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, str(P),
           "--noise", repr(args.noise), "--seed", str(args.seed), "--n-steps",
           str(args.n_steps), "--n-neighbors", str(args.n_neighbors), "--n-random",
           str(args.n_random), "--recall-queries", str(args.recall_queries),
           "--loss", args.loss, "--loss-scale", repr(args.loss_scale)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"size {P} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = ("| P | search | neighbour recall | graph (s) | init (s) | optimisation (s) | "
          "steps | total (s) | peak RSS (MB) | start RSS (MB) | "
          "median E_OR rot+hand (rad) | median E_OR O(4) (rad) |")


def build_table(results):
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['P']:,} | {r['search']} | {r['recall']:.4f} | {r['graph_s']:.1f} | "
            f"{r['init_s']:.1f} | {r['optimize_s']:.1f} | {r['steps']} | "
            f"{r['total_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['start_rss_mb']:.0f} | "
            f"{r['median_rot']:.4f} | {r['median_o4']:.4f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 100000],
                    help="numbers of particles P")
    ap.add_argument("--noise", type=float, default=0.1,
                    help="std of the Gaussian error added to the exact distances (rad)")
    ap.add_argument("--n-neighbors", type=int, default=32,
                    help="as recover_from_features' default")
    ap.add_argument("--n-random", type=int, default=16,
                    help="as recover_from_features' default")
    ap.add_argument("--loss", default="cauchy", choices=("cauchy", "huber", "l2"),
                    help="as recover_from_features' default")
    ap.add_argument("--loss-scale", type=float, default=0.3)
    ap.add_argument("--n-steps", type=int, default=1000,
                    help="maximum Adam steps (early stopping as in recover_orientations)")
    ap.add_argument("--recall-queries", type=int, default=500,
                    help="particles checked against brute force for the recall column")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run (P = 500 exact search, 4,000 inverted file), seconds")
    ap.add_argument(CHILD_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.recall_queries = [500, 4000], 200
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child_size is not None:
        print(json.dumps(run_size(args.child_size, args)), flush=True)
        return 0
    run = BenchmarkRun("recover.py", argv)
    results = []
    for P in args.sizes:
        print(f"P = {P}", file=sys.stderr, flush=True)
        results.append(run_child(P, args))
    header = (f"## orientlearn recovery at scale: exact distances + N(0, {args.noise:g}²) rad, "
              f"{args.n_neighbors} neighbours + {args.n_random} random pairs per particle, "
              f"{args.loss} loss (scale {args.loss_scale:g} rad), "
              f"8 image transforms" + (" [SMOKE RUN]" if args.smoke else ""))
    inits = sorted({str(r["init"]) for r in results})
    notes = [
        "",
        "- times: graph = `build_graph` (neighbour search + random pairs); init = spectral "
        "start + ambiguity check; optimisation = Adam (early stopping); total = their sum. "
        "Features are synthetic (`quaternion_features`), the embedding is not timed",
        f"- init: {', '.join(inits)}; neighbour recall vs brute force on "
        f"{args.recall_queries} random particles per size",
        "- peak RSS: each size in its own process, high-water mark after recovery; start "
        "RSS: before the graph (interpreter, numpy/scipy, truth, features)",
        "- E_OR: median d_q after aligning by a global rotation + handedness (no "
        "ground-truth help beyond that) and by the full O(4) (the paper's number)",
        *run.footer(peak_rss=False),
    ]
    text = "\n".join([header, "", build_table(results)] + notes) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
