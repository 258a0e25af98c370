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
    MAP_PATH,
    REPO,
    BenchmarkRun,
    current_rss_mb,
    peak_rss_mb,
    quaternion_features,
    write_report,
)
from orientlearn.core import alignment, geometry, graph, recovery

CHILD_FLAG = "--child-size"


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
    features = quaternion_features(q_true, transforms, np.float32)
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


# ------------------------------------------------------------ end to end, streamed

E2E_FLAG = "--child-end-to-end"


def train_quick_model(args, path, log):
    """A small distance model for the end-to-end rows, trained in this (parent) process so
    the measured child only loads it: ``--e2e-train`` noiseless particles of 5j0n with CTF
    at ``--e2e-size`` px, ``pipeline.train_model`` at ``--e2e-net-size`` px for
    ``--e2e-epochs`` epochs (product defaults otherwise)."""
    from orientlearn.core import pipeline, simulation, volumes
    from orientlearn.core.source import ArraySource
    volume, voxel = volumes.read_volume(MAP_PATH)
    sim = simulation.simulate_particles(volume, args.e2e_train, image_size=args.e2e_size,
                                        voxel_size=voxel, ctf=True, seed=[args.seed, 99],
                                        return_clean=False)
    source = ArraySource(sim["images"], sim["pixel_size"], quaternions=sim["quaternions"])
    model, history = pipeline.train_model(
        source, image_size=args.e2e_net_size, epochs=args.e2e_epochs, seed=args.seed,
        progress=lambda e, n, logs: log(f"training epoch {e}/{n}: {logs}"))
    model.save(path)
    return history


def run_end_to_end(P, args):
    """What a user runs, in this process: simulate ``P`` particles to an MRC stack on disk
    (``pipeline.simulate_to_stack``), then, from the stack with its shifts and CTF and NO
    orientations, ``embed_particles`` + ``recover_from_embedding`` (=
    ``recover_particles``) and ``reconstruct_halves`` with the recovered orientations.
    Returns times, the peak RSS after each stage, the error and the half-map FSC."""
    from orientlearn.core import pipeline, volumes
    from orientlearn.core.model import DistanceModel
    from orientlearn.core.progress import ProgressReporter

    def log(msg):
        print(f"[end-to-end P={P}] {msg}", file=sys.stderr, flush=True)

    def progress(label, unit="particles"):
        return ProgressReporter(log=log, label=label, unit=unit, interval=30.0)

    volume, voxel = volumes.read_volume(MAP_PATH)
    os.makedirs(args.workdir, exist_ok=True)
    stack = os.path.join(args.workdir, f"end_to_end_{P}.mrcs")
    res = dict(P=P, start_rss_mb=current_rss_mb())
    t = time.perf_counter()
    truth = pipeline.simulate_to_stack(volume, P, stack, image_size=args.e2e_size,
                                       voxel_size=voxel, ctf=True,
                                       max_shift=args.e2e_max_shift,
                                       sigma2=args.e2e_sigma2 or None, seed=args.seed,
                                       progress=progress("simulate"))
    res.update(simulate_s=time.perf_counter() - t, rss_simulate_mb=peak_rss_mb(),
               stack_gb=os.path.getsize(stack) / 1e9)
    try:
        particles = truth.with_records(quaternions=None)   # what a user has
        model = DistanceModel.load(args.e2e_model)
        transforms = pipeline.detector_transforms()
        t = time.perf_counter()
        features = pipeline.embed_particles(particles, model, transforms,
                                            progress=progress("embed"))
        res.update(embed_s=time.perf_counter() - t, rss_embed_mb=peak_rss_mb())
        log(f"embedded in {res['embed_s']:.0f} s; peak RSS {res['rss_embed_mb']:.0f} MB "
            f"(after simulate: {res['rss_simulate_mb']:.0f} MB)")
        t = time.perf_counter()
        recovered = pipeline.recover_from_embedding(features, transforms, model.distance_map,
                                                    seed=args.seed,    # product defaults
                                                    progress=progress("recover", "steps"))
        res.update(recover_s=time.perf_counter() - t, rss_recover_mb=peak_rss_mb())
        log(f"recovered in {res['recover_s']:.0f} s; peak RSS {res['rss_recover_mb']:.0f} MB")
        del features
        t = time.perf_counter()
        maps = pipeline.reconstruct_halves(
            particles.with_records(quaternions=recovered.quaternions), seed=args.seed,
            progress=progress("reconstruct"))
        res.update(reconstruct_s=time.perf_counter() - t, rss_reconstruct_mb=peak_rss_mb())
    finally:
        if not args.keep_stack:
            os.remove(stack)
    res["total_s"] = sum(res[k] for k in ("simulate_s", "embed_s", "recover_s", "reconstruct_s"))
    _, q_rot = alignment.align_rotation_handedness(truth.quaternions, recovered.quaternions)
    res["median_rot"] = float(np.median(alignment.orientation_errors(truth.quaternions, q_rot)))
    res["fsc0143_half"] = maps.resolution(0.143)
    res["pixel_size"] = truth.pixel_size
    log(f"done: {json.dumps(res)}")
    return res


def run_end_to_end_child(P, args):
    """One end-to-end size in a fresh interpreter (its own peak RSS)."""
    cmd = [sys.executable, os.path.abspath(__file__), E2E_FLAG, str(P), "--seed",
           str(args.seed), "--e2e-size", str(args.e2e_size),
           "--e2e-model", args.e2e_model, "--e2e-sigma2", repr(args.e2e_sigma2),
           "--e2e-max-shift", repr(args.e2e_max_shift), "--workdir", args.workdir]
    if args.keep_stack:
        cmd.append("--keep-stack")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"end-to-end size {P} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


E2E_HEADER = ("| P (end to end) | stack on disk (GB) | simulate (s) | embed (s) | recover (s) | "
              "reconstruct (s) | total (s) | peak RSS after simulate / embed / recover / "
              "reconstruct (MB) | median E_OR rot+hand (rad) | half-map FSC0.143 (Å) |")


def build_end_to_end_table(results):
    lines = [E2E_HEADER, "|" + "---|" * (E2E_HEADER.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['P']:,} | {r['stack_gb']:.2f} | {r['simulate_s']:.0f} | {r['embed_s']:.0f} | "
            f"{r['recover_s']:.0f} | {r['reconstruct_s']:.0f} | {r['total_s']:.0f} | "
            f"{r['rss_simulate_mb']:.0f} / {r['rss_embed_mb']:.0f} / {r['rss_recover_mb']:.0f}"
            f" / {r['rss_reconstruct_mb']:.0f} | {r['median_rot']:.3f} | "
            f"{r['fsc0143_half']:.1f} |")
    return "\n".join(lines)


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
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="numbers of particles P of the recovery rows (default 5,000, 20,000 "
                         "and 100,000; none when only --end-to-end is given)")
    ap.add_argument("--end-to-end", type=int, nargs="+", default=[],
                    help="numbers of particles of end-to-end rows: simulated to an MRC stack "
                         "on disk, embedded, recovered and reconstructed from it")
    ap.add_argument("--e2e-size", type=int, default=128,
                    help="end to end: image size in px (default 128)")
    ap.add_argument("--e2e-net-size", type=int, default=64,
                    help="end to end: the quick model's image size in px (default 64)")
    ap.add_argument("--e2e-model", default=None,
                    help="end to end: a trained model (.keras); default: train a quick one")
    ap.add_argument("--e2e-train", type=int, default=2000,
                    help="end to end: particles the quick model is trained on (default 2000)")
    ap.add_argument("--e2e-epochs", type=int, default=6,
                    help="end to end: epochs of the quick model (default 6)")
    ap.add_argument("--e2e-sigma2", type=float, default=0.0,
                    help="end to end: noise variance of the particles (default 0)")
    ap.add_argument("--e2e-max-shift", type=float, default=2.0,
                    help="end to end: shifts up to this many px (default 2)")
    ap.add_argument("--workdir", default=None,
                    help="end to end: folder of the stack (default: a temporary folder)")
    ap.add_argument("--keep-stack", action="store_true",
                    help="end to end: keep the simulated stack")
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
    ap.add_argument(E2E_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = [] if args.end_to_end else [5000, 20000, 100000]
    if args.smoke:
        args.sizes, args.recall_queries = [500, 4000], 200
        if args.end_to_end:
            args.end_to_end, args.e2e_size, args.e2e_net_size = [300], 32, 32
            args.e2e_train, args.e2e_epochs = 300, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child_size is not None:
        print(json.dumps(run_size(args.child_size, args)), flush=True)
        return 0
    if args.child_end_to_end is not None:
        print(json.dumps(run_end_to_end(args.child_end_to_end, args)), flush=True)
        return 0
    run = BenchmarkRun("recover.py", argv, tensorflow=bool(args.end_to_end))
    results = []
    for P in args.sizes:
        print(f"P = {P}", file=sys.stderr, flush=True)
        results.append(run_child(P, args))
    e2e_results, e2e_notes = [], []
    if args.end_to_end:
        import tempfile
        args.workdir = args.workdir or tempfile.mkdtemp(prefix="orientlearn-e2e-")
        if args.e2e_model is None:
            args.e2e_model = os.path.join(args.workdir, "quick_model.keras")
            t = time.perf_counter()
            history = train_quick_model(
                args, args.e2e_model, lambda m: print(m, file=sys.stderr, flush=True))
            e2e_notes.append(
                f"- end to end: quick model trained here ({args.e2e_train} noiseless particles "
                f"with CTF, {args.e2e_size} -> {args.e2e_net_size} px, {args.e2e_epochs} "
                f"epochs, best validation loss {history['best_val_loss']:.3f} vs constant "
                f"{history['val_constant_baseline']:.3f}, {time.perf_counter() - t:.0f} s, "
                "not in the times)")
        else:
            e2e_notes.append(f"- end to end: model {args.e2e_model}")
        for P in args.end_to_end:
            print(f"end to end P = {P}", file=sys.stderr, flush=True)
            e2e_results.append(run_end_to_end_child(P, args))
        e2e_notes.append(
            f"- end to end: 5j0n, {args.e2e_size} px with CTF, shifts <= "
            f"{args.e2e_max_shift:g} px, sigma2 {args.e2e_sigma2:g}; each size in its own "
            "process; the stack is written to disk in chunks (`simulate_to_stack`), then read "
            "back per batch with its shifts and CTF and no orientations: `embed_particles` "
            "(8 transforms) + `recover_from_embedding` (= `recover_particles`), "
            "`reconstruct_halves` (one pass, exact CTF); RSS: high-water mark after each stage")
    header = (f"## orientlearn recovery at scale: exact distances + N(0, {args.noise:g}²) rad, "
              f"{args.n_neighbors} neighbours + {args.n_random} random pairs per particle, "
              f"{args.loss} loss (scale {args.loss_scale:g} rad), "
              f"8 image transforms" if results else
              f"## orientlearn end to end, streamed from disk: 5j0n, {args.e2e_size} px")
    header += " [SMOKE RUN]" if args.smoke else ""
    notes = [""]
    if results:
        inits = sorted({str(r["init"]) for r in results})
        notes += [
            "- times: graph = `build_graph` (neighbour search + random pairs); init = spectral "
            "start + ambiguity check; optimisation = Adam (early stopping); total = their sum. "
            "Features are synthetic (`quaternion_features`), the embedding is not timed",
            f"- init: {', '.join(inits)}; neighbour recall vs brute force on "
            f"{args.recall_queries} random particles per size",
            "- peak RSS: each size in its own process, high-water mark after recovery; start "
            "RSS: before the graph (interpreter, numpy/scipy, truth, features)",
            "- E_OR: median d_q after aligning by a global rotation + handedness (no "
            "ground-truth help beyond that) and by the full O(4) (the paper's number)"]
    notes += e2e_notes + run.footer(peak_rss=False)
    tables = ([build_table(results)] if results else []) + \
        ([build_end_to_end_table(e2e_results)] if e2e_results else [])
    text = "\n".join([header, "", "\n\n".join(tables)] + notes) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
