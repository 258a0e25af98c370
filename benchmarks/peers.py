"""Peer benchmark: ASPIRE's common-lines orientation estimation on our simulated images.

ASPIRE (PyPI ``aspire``) runs in a subprocess, by the runner and conversion code shared
with the 'common lines (ASPIRE)' protocol (``orientlearn/core/peer_aspire.py``), in its own
virtual environment, made by this script on first use (``python -m venv`` + ``pip install
"aspire>=0.14.3,<0.15"``, which there brings numpy 2; default
``~/.cache/orientlearn/aspire-venv``, the protocol's default too, reused when present), or
in the interpreter given by ``--python`` (default: ``$ORIENTLEARN_ASPIRE_PYTHON`` when
set; ASPIRE 0.14.3 also runs with the plugin's numpy 1.26.1). Per noise level: simulate
projections of 5j0n with ``imaging.simulate_particles`` (same orientations for every
level, clean images scaled to unit variance, so ``sigma2`` is 1 / SNR), save them as
``.npy``, run ``CLSyncVoting(n_theta=360)`` on an ``ArrayImageSource`` in the ASPIRE
environment (cwd in the work folder, where ASPIRE writes its ``logs/``), bring back the rotations ``(N, 3, 3)`` and
evaluate them with ``alignment.compare_orientations`` (O(4) and rotation + handedness).

Conventions. ASPIRE's rotation matrices and image axes need not be ours. Any fixed
mismatch of the detector frame (a transposed image = an in-plane rotation composed with
the mirror), an inverted rotation (``R^T``, the quaternion conjugate) or a fixed change
of the object frame keeps the O(4) error unchanged, but the rotation + handedness error
only forgives the object-side part. So the conversion is ``q = L c(q_aspire)`` with
``c`` the identity or the conjugation and ``L`` one of the 8 exact image-side transforms
(``recovery.image_transforms()``), chosen ONCE: on the noiseless run (when it is part of
the run) as the candidate with the smallest rotation + handedness error, otherwise
``peer_aspire.DEFAULT_CONVENTION`` (found that way with ASPIRE 0.14.3; the protocol uses
it). The chosen convention is printed.

With ``--model`` (a ``.keras`` file from ``distance.save_distance_model``, e.g. from
``benchmarks/paper.py --save-model``) our method runs on the same images too.

Usage::

    python benchmarks/peers.py                              # 300 images, 48 px, sigma2 0 4 16
    python benchmarks/peers.py --n-images 200 --sigma2 0 16 --out peers.md
    python benchmarks/peers.py --smoke
"""
import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402

from orientlearn.core import alignment, geometry, imaging, recovery  # noqa: E402
from orientlearn.core.peer_aspire import (  # noqa: E402
    ASPIRE_PYTHON_VAR, DEFAULT_CONVENTION, DEFAULT_VENV, AspireUnavailable, choose_convention,
    convention_name, convert, ensure_aspire_venv, has_aspire, run_aspire)
from paper import MAP_PATH, git_commit, volume_at_size  # noqa: E402


def run_ours(model_path, images, log):
    """Our method on the same images: embed under the image transforms, recover."""
    from orientlearn.core import distance
    model, meta = distance.load_distance_model(model_path)
    size = int(meta.get("image_size", images.shape[-1]))
    if size != images.shape[-1]:
        images = imaging.downsample(images, size)
    t = time.perf_counter()
    transforms, _ = recovery.image_transforms()
    k, n = len(transforms), len(images)
    stacked = np.concatenate([imaging.apply_image_transform(images, g) for g in transforms])
    features = distance.embed(model, stacked).reshape(k, n, -1)
    q, info = recovery.recover_from_features(features, transforms, seed=0)
    log(f"  ours: recovered in {time.perf_counter() - t:.1f} s (L_OR {info['loss']:.4f})")
    return q, time.perf_counter() - t


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=300)
    ap.add_argument("--size", type=int, default=48, help="image box (px); the map is "
                    "Fourier-downsampled to it")
    ap.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 4.0, 16.0],
                    help="noise variances relative to unit-variance clean images (0: noiseless)")
    ap.add_argument("--n-theta", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venv", default=DEFAULT_VENV,
                    help="the ASPIRE venv, created when missing (default %(default)s)")
    ap.add_argument("--python", default=os.environ.get(ASPIRE_PYTHON_VAR) or None,
                    help="python of an existing env with ASPIRE, instead of --venv "
                         f"(default: ${ASPIRE_PYTHON_VAR} when set)")
    ap.add_argument("--model", help="a .keras distance model: also run our method")
    ap.add_argument("--workdir", help="keep the .npy files here (default: a temp dir)")
    ap.add_argument("--map", default=MAP_PATH)
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--smoke", action="store_true", help="tiny run (40 images, 32 px)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_images, args.size, args.sigma2 = 40, 32, [0.0, 16.0]
    return args


def main(argv=None):
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = datetime.datetime.now().astimezone()
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

    true_map, pixel_size = volume_at_size(args.size, args.map)
    workdir = args.workdir or tempfile.mkdtemp(prefix="orientlearn-peers-")
    os.makedirs(workdir, exist_ok=True)
    rows, convention, aspire_info = [], None, {}
    levels = sorted(args.sigma2, key=lambda s: s != 0)       # noiseless first
    for s2 in levels:
        sim = imaging.simulate_particles(true_map, args.n_images, sigma2=s2 or None,
                                         seed=args.seed, voxel_size=pixel_size,
                                         return_clean=False)
        images, q_true = sim["images"], sim["quaternions"]
        log(f"sigma2={s2:g}: ASPIRE CLSyncVoting on {len(images)} images of {args.size} px...")
        rot, aspire_info = run_aspire(python, images, pixel_size, args.n_theta, workdir,
                                      f"sigma2_{s2:g}", seed=args.seed,
                                      log=lambda line: log(f"    {line}"))
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
        rows.append(dict(method=f"ASPIRE CLSyncVoting (n_theta {args.n_theta})", sigma2=s2,
                         cmp=cmp, seconds=aspire_info["estimate_seconds"],
                         wall=aspire_info["wall_seconds"], rss=aspire_info["peak_rss_mb"]))
        if args.model:
            q_ours, sec = run_ours(args.model, images, log)
            cmp = alignment.compare_orientations(q_true, q_ours)
            rows.append(dict(method=f"orientlearn ({os.path.basename(args.model)})",
                             sigma2=s2, cmp=cmp, seconds=sec, wall=sec,
                             rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))

    d = np.degrees
    lines = [f"## Peers: orientation estimation on {args.n_images} projections of 5j0n, "
             f"{args.size} px ({pixel_size:.2f} Å/px)" + (" [SMOKE RUN]" if args.smoke else ""),
             "",
             "| method | σ² (SNR) | E_OR median O(4) | E_OR mean O(4) | E_OR median rot+hand "
             "| E_OR mean rot+hand | time (s) | wall incl. start (s) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cmp"]
        snr = "noiseless" if not r["sigma2"] else f"{r['sigma2']:g} (1/{r['sigma2']:g})"
        lines.append(f"| {r['method']} | {snr} | {c['o4_median']:.3f} ({d(c['o4_median']):.1f}°) "
                     f"| {c['o4_mean']:.3f} ({d(c['o4_mean']):.1f}°) "
                     f"| {c['rot_median']:.3f} ({d(c['rot_median']):.1f}°) "
                     f"| {c['rot_mean']:.3f} ({d(c['rot_mean']):.1f}°) "
                     f"| {r['seconds']:.1f} | {r['wall']:.1f} | {r['rss']:.0f} |")
    rnd = rows[0]["cmp"]
    lines += [
        "",
        f"- errors in rad (degrees); random orientations give median "
        f"{rnd['random_median']:.3f} rad ({d(rnd['random_median']):.0f}°), mean "
        f"{rnd['random_mean']:.3f} rad",
        f"- ASPIRE {aspire_info.get('aspire_version')} (numpy {aspire_info.get('numpy_version')}) "
        f"in {os.path.dirname(os.path.dirname(python))}; rotations converted as "
        f"q = {convention[0]}(q_aspire) "
        f"({convention[3]}); 'time' = estimate_rotations() only",
        "- our method: " + (f"model {args.model}" if args.model else
                            "not run (no --model given; only ASPIRE's rows are shown)"),
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs; date "
        f"{started.isoformat(timespec='seconds')}; git commit {git_commit()}",
        f"- command: python benchmarks/peers.py {' '.join(sys.argv[1:] if argv is None else argv)}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
