"""Peer benchmark: ASPIRE's common-lines orientation estimation and our method on the
paper benchmark's own test images.

Images. Per noise level (``--sigma2``, relative to unit-variance clean images at the
simulated 116 px, as in ``benchmarks/paper.py``; 0 = noiseless) the paper benchmark's
particles are regenerated exactly as ``paper.py``'s ``run_setting`` makes them (the same
``simulation.simulate_particles`` call, via ``train.simulate_like_paper``: 5,000 particles,
116 px at 3.667 A/px, the map from ``volume_at_size(116)``, ``--seed`` 0), Fourier-
downsampled to ``--size`` (64 px, the size the network sees; the pixel size scales to
3.667 * 116 / 64 A). The test split is the last 1,650 particles (``split_sizes``, never
seen in training); both methods get the first ``--n-images`` (300) of them, the same
images. ASPIRE's cost grows roughly as N^2 to N^3, which is why it gets N of the 1,650.

ASPIRE (PyPI ``aspire``) runs in a subprocess, by the runner and conversion code shared
with the 'common lines (ASPIRE)' protocol (``orientlearn/core/peer_aspire.py``), in its own
virtual environment, made by this script on first use (``python -m venv`` + ``pip install
"aspire>=0.14.3,<0.15"``, which there brings numpy 2; default
``~/.cache/orientlearn/aspire-venv``, the protocol's default too, reused when present), or
in the interpreter given by ``--python`` (default: ``$ORIENTLEARN_ASPIRE_PYTHON`` when
set). It runs ``CLSyncVoting(n_theta=360)`` on an ``ArrayImageSource`` (cwd in the work
folder, where ASPIRE writes its ``logs/``); its rotations ``(N, 3, 3)`` are evaluated with
``alignment.compare_orientations`` (O(4) and rotation + handedness).

Our method (``--models SIGMA2=PATH ...``: ``.keras`` files of
``distance.save_distance_model``, e.g. ``benchmarks/paper.py --save-model``; ``--model
PATH``: one model for every level). Each level uses the model trained at the nearest
sigma^2 at or above it (else the nearest below); the table names it. The images go
through what the recover protocol runs (``core.pipeline``): ``embed_particles`` under the
detector transforms, ``recover_from_embedding`` with the model's distance head, as
``paper.py`` does. Two rows per
level: recovery from the same N images as ASPIRE, and (``--ours-all-test``, default on)
recovery from all 1,650 test images with the errors of the same first N (our method gets
better with more images; recovery time grows about linearly).

Conventions. ASPIRE's rotation matrices and image axes need not be ours. Any fixed
mismatch of the detector frame (a transposed image = an in-plane rotation composed with
the mirror), an inverted rotation (``R^T``, the quaternion conjugate) or a fixed change
of the object frame keeps the O(4) error unchanged, but the rotation + handedness error
only forgives the object-side part. So the conversion is ``q = L c(q_aspire)`` with
``c`` the identity or the conjugation and ``L`` one of the 8 exact image-side transforms
(``graph.image_transforms()``), chosen ONCE: on the noiseless run (when it is part of
the run) as the candidate with the smallest rotation + handedness error, otherwise
``peer_aspire.DEFAULT_CONVENTION`` (found that way with ASPIRE 0.14.3; the protocol uses
it). The chosen convention is printed.

Usage::

    python benchmarks/peers.py --models 0=/tmp/bench/m/5j0n_sigma2_0_64px.keras \\
        16=/tmp/bench/m/5j0n_sigma2_16_64px.keras --out peers.md   # 300 images, 0 4 16
    python benchmarks/peers.py --n-images 200 --sigma2 0 16         # ASPIRE only
    python benchmarks/peers.py --smoke [--model tiny_32px.keras]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from orientlearn.benchmarking import (
    MAP_PATH,
    BenchmarkRun,
    downsampled_noise_factor,
    peak_rss_mb,
    simulate_like_paper,
    split_sizes,
    volume_at_size,
    write_report,
)
from orientlearn.core import alignment, geometry, pipeline
from orientlearn.core.peer_aspire import (
    ASPIRE_PYTHON_VAR,
    DEFAULT_CONVENTION,
    DEFAULT_VENV,
    AspireUnavailable,
    choose_convention,
    convention_name,
    convert,
    ensure_aspire_venv,
    has_aspire,
    run_aspire,
)
from orientlearn.core.source import ArraySource

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def paper_test_images(args, sigma2, true_map, pixel_size):
    """The paper benchmark's test particles at ``sigma2``, downsampled to ``args.size``:
    ``(images (n_test, S, S), quaternions (n_test, 4))``. ``simulate_like_paper`` makes
    them with paper.py's ``simulate_particles`` call (no CTF / shifts, paper.py's
    default) and downsamples them as paper.py does for its network."""
    like = argparse.Namespace(n_particles=args.n_particles, seed=args.seed,
                              ctf_shifts=False, max_shift=0.0, net_size=args.size)
    images, quats = simulate_like_paper(like, sigma2, true_map, pixel_size)[:2]
    n_train, n_val, _ = split_sizes(args.n_particles)
    return images[n_train + n_val:], quats[n_train + n_val:]


def _log_aspire_line(line):
    print(f"    {line}", file=sys.stderr, flush=True)


def aspire_runner_process():
    """A one-worker process pool, started (spawned) while this process is still small, in
    which ``run_aspire`` starts ASPIRE. Linux carries a process's peak RSS over
    ``fork`` / ``exec`` into ``ru_maxrss``, so an ASPIRE started from this process, once
    it holds the simulated stacks and TensorFlow, would report this process's peak as
    its own; from the small worker it reports ASPIRE's."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(int, 0).result()            # start it now
    return pool


def parse_models(items, error):
    """``['SIGMA2=PATH', ...]`` -> ``[(sigma2, path)]`` sorted by sigma2."""
    out = []
    for item in items:
        key, sep, path = item.partition("=")
        try:
            s2 = float(key)
        except ValueError:
            s2 = None
        if not sep or s2 is None or not path:
            error(f"--models items are SIGMA2=PATH, e.g. 16=/tmp/m.keras (got {item!r})")
        out.append((s2, path))
    if len({s for s, _ in out}) != len(out):
        error("--models: one model per sigma2")
    return sorted(out)


def pick_model(models, sigma2):
    """``(sigma2, path)`` of the model for a noise level: the one trained at the nearest
    sigma^2 at or above it, else the nearest below. ``sigma2`` None (``--model``) fits
    every level."""
    if len(models) == 1 and models[0][0] is None:
        return models[0]
    above = [m for m in models if m[0] >= sigma2 - 1e-12]
    return min(above) if above else max(models)


class Ours:
    """Our method with one loaded model: what the recover protocol runs
    (``pipeline.embed_particles`` under the detector transforms, then
    ``pipeline.recover_from_embedding``; ``recover_particles`` is these two calls)."""

    _cache = {}

    def __init__(self, path, size, log):
        from orientlearn.core.model import DistanceModel
        if path not in Ours._cache:
            t = time.perf_counter()
            Ours._cache[path] = DistanceModel.load(path)
            log(f"  loaded {path} in {time.perf_counter() - t:.1f} s")
        self.model = Ours._cache[path]
        if (self.model.image_size or size) != size:
            raise SystemExit(f"ERROR: {path} expects {self.model.image_size} px images; the "
                             f"images here are {size} px (--size)")
        self.transforms = pipeline.detector_transforms()

    @property
    def meta(self):
        """The model's metadata (``model_io``: sigma2, head, image size...)."""
        return self.model.metadata

    @property
    def head(self):
        return self.model.head

    def embed(self, images):
        # The images are on the model's grid already: its own pixel size.
        source = ArraySource(images, self.model.pixel_size or 1.0)
        return pipeline.embed_particles(source, self.model, self.transforms)

    def recover(self, features, seed, n_steps):
        result = pipeline.recover_from_embedding(features, self.transforms,
                                                 self.model.distance_map, seed=seed,
                                                 n_steps=n_steps)
        return result.quaternions, result.info


def run_ours(ours, images, q_true, n, args, log):
    """Rows of our method: recovery from the first ``n`` images, and (``--ours-all-test``)
    from all of them with the errors of the same first ``n``."""
    rows = []
    t = time.perf_counter()
    feats = ours.embed(images[:n])
    t_embed = time.perf_counter() - t
    t = time.perf_counter()
    q, info = ours.recover(feats, args.seed, args.recovery_steps)
    t_rec = time.perf_counter() - t
    log(f"  ours, {n} images: embedded in {t_embed:.1f} s, recovered in {t_rec:.1f} s "
        f"(L_OR {info['loss']:.4f})")
    rows.append(dict(kind="n", cmp=alignment.compare_orientations(q_true[:n], q),
                     seconds=t_embed + t_rec, rss=peak_rss_mb(), n_used=n))
    if args.ours_all_test and len(images) > n:
        t = time.perf_counter()
        # embed is per image (per-image standardisation, inference mode): the first n
        # features are the ones above.
        feats = np.concatenate([feats, ours.embed(images[n:])], axis=1)
        t_embed_all = t_embed + time.perf_counter() - t
        t = time.perf_counter()
        q, info = ours.recover(feats, args.seed, args.recovery_steps)
        t_rec = time.perf_counter() - t
        log(f"  ours, all {len(images)} test images: embedded in {t_embed_all:.1f} s, "
            f"recovered in {t_rec:.1f} s (L_OR {info['loss']:.4f})")
        rows.append(dict(kind="all", cmp=alignment.compare_orientations(q_true[:n], q[:n]),
                         seconds=t_embed_all + t_rec, rss=peak_rss_mb(), n_used=len(images)))
    return rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=300,
                    help="the first N test particles are used (default %(default)s)")
    ap.add_argument("--size", type=int, default=64, help="both methods get the images "
                    "Fourier-downsampled to this size (px; default %(default)s, the network's)")
    ap.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 4.0, 16.0],
                    help="noise variances relative to unit-variance clean images at the "
                         "simulated size (0: noiseless)")
    ap.add_argument("--n-particles", type=int, default=5000,
                    help="particles simulated, as paper.py's (its split gives the test set)")
    ap.add_argument("--sim-size", type=int, default=116,
                    help="simulated box (px), as paper.py's --size")
    ap.add_argument("--seed", type=int, default=0,
                    help="simulation seed (paper.py's --seed of the models' run) and "
                         "recovery / ASPIRE seed")
    ap.add_argument("--n-theta", type=int, default=360)
    ap.add_argument("--venv", default=DEFAULT_VENV,
                    help="the ASPIRE venv, created when missing (default %(default)s)")
    ap.add_argument("--python", default=os.environ.get(ASPIRE_PYTHON_VAR) or None,
                    help="python of an existing env with ASPIRE, instead of --venv "
                         f"(default: ${ASPIRE_PYTHON_VAR} when set)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--models", nargs="+", default=[], metavar="SIGMA2=PATH",
                       help="distance models (.keras) by the sigma2 they were trained at; "
                            "each level uses the nearest at or above it (else below)")
    group.add_argument("--model", metavar="PATH", help="one model for every level")
    ap.add_argument("--ours-all-test", action=argparse.BooleanOptionalAction, default=True,
                    help="also recover our orientations from all test images and report the "
                         "errors of the same first N (default: on)")
    ap.add_argument("--recovery-steps", type=int, default=1000)
    ap.add_argument("--workdir", help="keep ASPIRE's .npy files here (default: a temp dir)")
    ap.add_argument("--map", default=MAP_PATH)
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run (200 particles at 48 px downsampled to 32, 40 images, "
                         "sigma2 0 16)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_particles, args.sim_size, args.size = 200, 48, 32
        args.n_images, args.sigma2, args.recovery_steps = 40, [0.0, 16.0], 100
    args.models = ([(None, args.model)] if args.model else
                   parse_models(args.models, ap.error))
    for _, path in args.models:
        if not os.path.isfile(path):
            ap.error(f"no model file {path}")
    n_test = split_sizes(args.n_particles)[2]
    if not 3 <= args.n_images <= n_test:
        ap.error(f"--n-images must be in [3, {n_test}] (the test split of "
                 f"{args.n_particles} particles)")
    if args.size > args.sim_size:
        ap.error("--size must be at most --sim-size (it is a downsampling)")
    return args


def _fmt_s2(s2):
    return "?" if s2 is None else f"{s2:g}"


def main(argv=None):
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    run = BenchmarkRun("peers.py", argv)
    try:
        if args.python:
            ok, why = has_aspire(args.python)
            if not ok:
                raise AspireUnavailable(why)
            python = args.python
        else:
            python = ensure_aspire_venv(args.venv, log)
    except AspireUnavailable as err:
        hint = (f"--python / ${ASPIRE_PYTHON_VAR} must name the python of an env with "
                "aspire; or leave it out to use --venv" if args.python else
                f"needs network access to PyPI to create {args.venv}; or create it with: "
                f"python -m orientlearn.core.peer_aspire create --venv {args.venv}")
        print(f"ERROR: ASPIRE is not available, so there is no peer benchmark.\n{err}\n"
              f"({hint})", file=sys.stderr)
        return 2

    runner = aspire_runner_process()
    true_map, sim_pixel = volume_at_size(args.sim_size, args.map)
    pixel_size = sim_pixel * args.sim_size / args.size
    n_test = split_sizes(args.n_particles)[2]
    n = args.n_images
    workdir = args.workdir or tempfile.mkdtemp(prefix="orientlearn-peers-")
    os.makedirs(workdir, exist_ok=True)
    rows, convention, aspire_info, used = [], None, {}, {}
    levels = sorted(args.sigma2, key=lambda s: s != 0)       # noiseless first
    for s2 in levels:
        t = time.perf_counter()
        images_all, q_all = paper_test_images(args, s2, true_map, sim_pixel)
        images, q_true = images_all[:n], q_all[:n]
        log(f"sigma2={s2:g}: {args.n_particles} particles simulated at {args.sim_size} px "
            f"and downsampled to {args.size} px in {time.perf_counter() - t:.1f} s; "
            f"ASPIRE CLSyncVoting on the first {n} of {len(images_all)} test images...")
        rot, aspire_info = runner.submit(
            run_aspire, python, images, pixel_size, args.n_theta, workdir, f"sigma2_{s2:g}",
            seed=args.seed, log=_log_aspire_line).result()
        q_aspire = geometry.matrix_to_quaternion(rot)
        if convention is None:
            if s2 == 0:
                err, desc, k, conj = choose_convention(q_true, q_aspire)
                convention = (desc, k, conj, "chosen on the noiseless run")
                log(f"  convention: q = {desc} (mean rot+hand error {err:.4f} rad)")
            else:
                k, conj = DEFAULT_CONVENTION
                convention = (convention_name(k, conj), k, conj, "default (no noiseless run)")
        cmp = alignment.compare_orientations(q_true, convert(q_aspire, *convention[1:3]))
        rows.append(dict(method=f"ASPIRE CLSyncVoting (n_theta {args.n_theta}), first {n:,} "
                                f"test images", model="—", sigma2=s2, cmp=cmp,
                         seconds=aspire_info["estimate_seconds"],
                         wall=aspire_info["wall_seconds"], rss=aspire_info["peak_rss_mb"]))
        if args.models:
            m_s2, path = pick_model(args.models, s2)
            ours = Ours(path, args.size, log)
            used[s2] = (m_s2, path, ours.meta)
            label = (f"{os.path.basename(path)} "
                     f"(σ² {_fmt_s2(m_s2 if m_s2 is not None else ours.meta.get('sigma2'))}, "
                     f"head {ours.head})")
            for r in run_ours(ours, images_all, q_all, n, args, log):
                method = (f"orientlearn, first {n:,} test images" if r["kind"] == "n" else
                          f"orientlearn, all {r['n_used']:,} test images "
                          f"(error on the same {n:,})")
                rows.append(dict(method=method, model=label, sigma2=s2, cmp=r["cmp"],
                                 seconds=r["seconds"], wall=r["seconds"], rss=r["rss"]))
    runner.shutdown()

    d = np.degrees
    lines = [f"## Peers: orientation estimation on the paper benchmark's test particles of "
             f"5j0n (first {n:,} of {n_test:,}), simulated at {args.sim_size} px "
             f"({sim_pixel:.3f} Å/px), Fourier-downsampled to {args.size} px "
             f"({pixel_size:.3f} Å/px)" + (" [SMOKE RUN]" if args.smoke else ""),
             "",
             "| method | model | σ² (SNR) | E_OR median O(4) | E_OR mean O(4) "
             "| E_OR median rot+hand | E_OR mean rot+hand | time (s) | wall incl. start (s) "
             "| peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cmp"]
        snr = "noiseless" if not r["sigma2"] else f"{r['sigma2']:g} (1/{r['sigma2']:g})"
        lines.append(f"| {r['method']} | {r['model']} | {snr} "
                     f"| {c['o4_median']:.3f} ({d(c['o4_median']):.1f}°) "
                     f"| {c['o4_mean']:.3f} ({d(c['o4_mean']):.1f}°) "
                     f"| {c['rot_median']:.3f} ({d(c['rot_median']):.1f}°) "
                     f"| {c['rot_mean']:.3f} ({d(c['rot_mean']):.1f}°) "
                     f"| {r['seconds']:.1f} | {r['wall']:.1f} | {r['rss']:.0f} |")
    rnd = rows[0]["cmp"]
    factor = downsampled_noise_factor(args.sim_size, args.size)
    if used:
        models_line = ("- models (one --model for every level): " if args.model else
                       "- models (each level: the one trained at the nearest σ² at or above "
                       "it, else below): ") + "; ".join(
                          f"σ² {s2:g} → {path} (metadata: σ² {meta.get('sigma2', '?')}, "
                          f"{meta.get('image_size', '?')} px, head {meta.get('head', 'angle')}"
                          f", {meta.get('architecture', '?')}, "
                          f"{meta.get('source', 'source ?')})"
                          for s2, (_, path, meta) in sorted(used.items()))
    else:
        models_line = "- our method: not run (no --models / --model given; ASPIRE rows only)"
    lines += [
        "",
        f"- images: the particles of `benchmarks/paper.py` (same `simulate_particles` call: "
        f"{args.n_particles:,} particles of 5j0n, uniform SO(3), {args.sim_size} px at "
        f"{sim_pixel:.3f} Å/px, seed {args.seed}, no CTF / shifts), test split = the last "
        f"{n_test:,} (split {' / '.join(f'{x:,}' for x in split_sizes(args.n_particles))}), "
        f"first {n:,} used, Fourier-downsampled to {args.size} px ({pixel_size:.3f} Å/px); "
        f"both methods get these same images; σ² is relative to unit-variance clean images "
        f"at {args.sim_size} px (the downsampling keeps a fraction {factor:.3f} of the white "
        f"noise's variance, and most of the signal's)",
        f"- errors in rad (degrees) on the first {n:,} test images; random orientations give "
        f"median {rnd['random_median']:.3f} rad ({d(rnd['random_median']):.0f}°), mean "
        f"{rnd['random_mean']:.3f} rad",
        f"- ASPIRE {aspire_info.get('aspire_version')} (numpy {aspire_info.get('numpy_version')}) "
        f"in {os.path.dirname(os.path.dirname(python))}; rotations converted as "
        f"q = {convention[0]}(q_aspire) "
        f"({convention[3]}); 'time' = estimate_rotations() only; 'wall' adds the "
        f"interpreter start, imports and file exchange; RSS: peak of the ASPIRE subprocess "
        f"(started from a small helper process)",
        models_line,
    ]
    if used:
        lines.append(
            f"- our method: embedding under the 8 image transforms + "
            f"`pipeline.recover_from_embedding` (defaults, {args.recovery_steps} steps, seed "
            f"{args.seed}, distance map of the model's head); 'time' = embedding + recovery "
            f"(model loading excluded; the first embedding includes TensorFlow's tracing); "
            f"RSS = peak of this benchmark process (includes the simulation)"
            + (f"; the 'all {n_test:,}' rows recover all test images and report the errors "
               f"of the same first {n:,} (ASPIRE's cost grows ~N² to N³, so it gets only "
               f"those {n:,})" if args.ours_all_test else ""))
    lines += [
        *run.footer(),
    ]
    text = "\n".join(lines) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
