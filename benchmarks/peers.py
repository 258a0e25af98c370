"""Peer benchmark: ASPIRE's common-lines orientation estimation on our simulated images.

ASPIRE (PyPI ``aspire``) needs numpy 2 while orientlearn pins numpy 1.26, so it runs in
its own virtual environment, made by this script on first use (``python3 -m venv`` +
``pip install aspire``; default ``~/.cache/orientlearn/aspire-venv``, reused when
present). Per noise level: simulate projections of 5j0n with ``imaging.simulate_particles``
(same orientations for every level, clean images scaled to unit variance, so ``sigma2``
is 1 / SNR), save them as ``.npy``, run ``CLSyncVoting(n_theta=360)`` on an
``ArrayImageSource`` in the ASPIRE venv, bring back the rotations ``(N, 3, 3)`` and
evaluate them with ``alignment.compare_orientations`` (O(4) and rotation + handedness).

Conventions. ASPIRE's rotation matrices and image axes need not be ours. Any fixed
mismatch of the detector frame (a transposed image = an in-plane rotation composed with
the mirror), an inverted rotation (``R^T``, the quaternion conjugate) or a fixed change
of the object frame keeps the O(4) error unchanged, but the rotation + handedness error
only forgives the object-side part. So the conversion is ``q = L c(q_aspire)`` with
``c`` the identity or the conjugation and ``L`` one of the 8 exact image-side transforms
(``recovery.image_transforms()``), chosen ONCE: on the noiseless run (when it is part of
the run) as the candidate with the smallest rotation + handedness error, otherwise the
default below (found that way with ASPIRE 0.14.3). The chosen convention is printed.

With ``--model`` (a ``.keras`` file from ``distance.save_distance_model``, e.g. from
``benchmarks/paper.py --save-model``) our method runs on the same images too.

Usage::

    python benchmarks/peers.py                              # 300 images, 48 px, sigma2 0 4 16
    python benchmarks/peers.py --n-images 200 --sigma2 0 16 --out peers.md
    python benchmarks/peers.py --smoke
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
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
from paper import MAP_PATH, git_commit, volume_at_size  # noqa: E402

DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "orientlearn", "aspire-venv")
#: Default conversion (index into recovery.image_transforms(), conjugate?) of ASPIRE
#: rotations to ours, used when the run has no noiseless setting to determine it.
DEFAULT_CONVENTION = (0, True)

#: Runs inside the ASPIRE venv: images .npy -> rotations .npy + a JSON of timings.
ASPIRE_RUNNER = r'''
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import aspire
from aspire.source import ArrayImageSource
from aspire.abinitio import CLSyncVoting
images_path, out_path, info_path, pixel_size, n_theta = sys.argv[1:6]
images = np.load(images_path)
t1 = time.perf_counter()
src = ArrayImageSource(images, pixel_size=float(pixel_size))
est = CLSyncVoting(src, n_theta=int(n_theta))
ret = est.estimate_rotations()
rotations = est.rotations if est.rotations is not None else np.asarray(ret)
t2 = time.perf_counter()
np.save(out_path, np.asarray(rotations, dtype=np.float64))
json.dump(dict(aspire_version=aspire.__version__, numpy_version=np.__version__,
               estimate_seconds=t2 - t1, import_seconds=t1 - t0,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
          open(info_path, "w"))
'''


class AspireUnavailable(RuntimeError):
    pass


def ensure_aspire_venv(venv, log, timeout=1800):
    """Python of a venv with ASPIRE importable; creates it if needed. Raises
    ``AspireUnavailable`` with the reason (no network, pip failure...)."""
    python = os.path.join(venv, "bin", "python")

    def importable():
        if not os.path.exists(python):
            return False
        r = subprocess.run([python, "-c", "import aspire"], capture_output=True, text=True)
        return r.returncode == 0

    if importable():
        return python
    log(f"creating the ASPIRE venv at {venv} (python3 -m venv + pip install aspire)...")
    t = time.perf_counter()
    base = getattr(sys, "_base_executable", None) or "python3"
    steps = [[base, "-m", "venv", venv],
             [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             [python, "-m", "pip", "install", "--quiet", "aspire"]]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AspireUnavailable(f"{' '.join(cmd)} failed: {err}") from err
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
            raise AspireUnavailable(f"{' '.join(cmd)} exited {r.returncode}:\n{tail}")
    if not importable():
        raise AspireUnavailable(f"aspire installed in {venv} but does not import")
    log(f"ASPIRE venv ready in {time.perf_counter() - t:.0f} s")
    return python


def run_aspire(python, images, pixel_size, n_theta, workdir, tag):
    """CLSyncVoting on ``images (N, S, S)`` in the ASPIRE venv -> ``(rotations (N, 3, 3),
    info dict)``; ``info['wall_seconds']`` includes the interpreter start and imports."""
    runner = os.path.join(workdir, "aspire_runner.py")
    with open(runner, "w") as fh:
        fh.write(ASPIRE_RUNNER)
    paths = [os.path.join(workdir, f"{tag}_{name}") for name in
             ("images.npy", "rotations.npy", "info.json")]
    np.save(paths[0], np.ascontiguousarray(images, dtype=np.float32))
    t = time.perf_counter()
    r = subprocess.run([python, runner, *paths, repr(float(pixel_size)), str(n_theta)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"ASPIRE run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(paths[2]) as fh:
        info = json.load(fh)
    info["wall_seconds"] = wall
    return np.load(paths[1]), info


def convention_candidates():
    """[(description, L index, conjugate)] for ``q = L c(q_aspire)``."""
    transforms, names = recovery.image_transforms()
    return [(f"{'conj, ' if conj else ''}{names[k]}", k, conj)
            for k in range(len(transforms)) for conj in (False, True)]


def convert(q_aspire, k, conj):
    transforms, _ = recovery.image_transforms()
    q = geometry.conjugate(q_aspire) if conj else q_aspire
    return geometry.normalize(geometry.multiply(transforms[k], q))


def choose_convention(q_true, q_aspire):
    """The candidate conversion with the smallest rotation + handedness mean error."""
    best = None
    for desc, k, conj in convention_candidates():
        info, _ = alignment.align_rotation_handedness(q_true, convert(q_aspire, k, conj))
        # ties (rot0 vs rot180: the same up to handedness) keep the earlier candidate
        if best is None or info["mean_error"] < best[0] - 1e-9:
            best = (info["mean_error"], desc, k, conj)
    return best


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
    ap.add_argument("--venv", default=DEFAULT_VENV)
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
        python = ensure_aspire_venv(args.venv, log)
    except AspireUnavailable as err:
        print(f"ERROR: ASPIRE is not available, so there is no peer benchmark.\n{err}\n"
              f"(needs network access to PyPI to create {args.venv}; or create it by hand: "
              f"python3 -m venv {args.venv} && {args.venv}/bin/pip install aspire)",
              file=sys.stderr)
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
                                      f"sigma2_{s2:g}")
        q_aspire = geometry.matrix_to_quaternion(rot)
        if convention is None:
            if s2 == 0:
                err, desc, k, conj = choose_convention(q_true, q_aspire)
                convention = (desc, k, conj, "chosen on the noiseless run")
                log(f"  convention: q = {desc} (mean rot+hand error {err:.4f} rad)")
            else:
                k, conj = DEFAULT_CONVENTION
                desc = [c[0] for c in convention_candidates() if c[1:] == (k, conj)][0]
                convention = (desc, k, conj, "default (no noiseless run)")
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
        f"in {args.venv}; rotations converted as q = {convention[0]}(q_aspire) "
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
