"""ASPIRE's common-lines orientation estimation (``CLSyncVoting``) as a peer method.

ASPIRE (PyPI ``aspire``) runs in a subprocess, in whichever Python environment has it,
exchanging ``.npy`` files with a small runner script (``ASPIRE_RUNNER``). Two ways to
provide that environment:

- the plugin's own environment: ``pip install "aspire>=0.14.3,<0.15" numpy==1.26.1``
  (or the package extra ``scipion-em-orientlearn[aspire]``). ASPIRE 0.14.3 declares
  ``numpy>=1.25`` and runs with the plugin's numpy 1.26.1 / scipy 1.10 (checked:
  CLSyncVoting on noiseless projections, 0.1 degree error);
- a separate virtual environment, made by ``python -m orientlearn.core.peer_aspire create``
  (default ``~/.cache/orientlearn/aspire-venv``; there pip picks ASPIRE's newest
  dependencies, numpy 2 included). Another place is chosen with ``--venv DIR``; then point
  the plugin variable ``ORIENTLEARN_ASPIRE_PYTHON`` at ``DIR/bin/python``.

``find_aspire_python`` picks the interpreter: ``ORIENTLEARN_ASPIRE_PYTHON`` when set,
else this interpreter when ``aspire`` is importable here, else the default venv.

ASPIRE writes a ``logs/`` folder into its current directory (also on a bare
``import aspire``): every subprocess here runs with its cwd in a work or temp folder.

Conventions. ASPIRE's rotations are converted to our quaternions as
``q = L c(q_aspire)`` with ``c`` the identity or the conjugation (``R^T``) and ``L`` one of
the 8 exact image-side transforms of ``graph.image_transforms()``. For images laid out
as ``orientlearn`` writes and reads them (``simulation.simulate_particles``, MRC stacks via
``convert.read_particle_images``) it is ``DEFAULT_CONVENTION``: the conjugate, no image
transform (found by ``choose_convention`` on noiseless projections with ASPIRE 0.14.3:
0.002 rad rotation + handedness error). Nothing in this module imports Scipion.
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import geometry

#: The ASPIRE releases this code was checked with.
ASPIRE_REQUIREMENT = "aspire>=0.14.3,<0.15"
#: Plugin variable / environment variable naming the python of an env with ASPIRE.
ASPIRE_PYTHON_VAR = "ORIENTLEARN_ASPIRE_PYTHON"
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "orientlearn", "aspire-venv")
#: (index into graph.image_transforms(), conjugate?) taking ASPIRE rotations to ours.
DEFAULT_CONVENTION = (0, True)
#: Files of one run, under its work folder.
IMAGES_FILE, ROTATIONS_FILE, INFO_FILE, RUNNER_FILE = (
    "images.npy", "rotations.npy", "info.json", "aspire_runner.py")

#: Runs inside the ASPIRE environment:
#: ``runner images.npy rotations.npy info.json pixel_size n_theta [seed]``.
#: Prints one line per stage (the caller streams them to its log); ASPIRE's own log
#: lines and progress bars come on stderr.
ASPIRE_RUNNER = r'''
import json, resource, sys, threading, time
t0 = time.perf_counter()

def say(msg):
    print(msg, flush=True)

import numpy as np
import aspire
from aspire.source import ArrayImageSource
from aspire.abinitio import CLSyncVoting
images_path, out_path, info_path, pixel_size, n_theta = sys.argv[1:6]
seed = int(sys.argv[6]) if len(sys.argv) > 6 else None
t1 = time.perf_counter()
say(f"ASPIRE {aspire.__version__} (numpy {np.__version__}) imported in {t1 - t0:.1f} s")
if seed is not None:
    np.random.seed(seed)
images = np.load(images_path)
n = len(images)
say(f"{n} images of {images.shape[1]}x{images.shape[2]} px, n_theta {int(n_theta)}")
src = ArrayImageSource(images, pixel_size=float(pixel_size))
est = CLSyncVoting(src, n_theta=int(n_theta))
stages = []

def stage(name, fn):
    say(f"Stage {len(stages) + 1}/3: {name}...")
    t = time.perf_counter()
    done = threading.Event()

    def heartbeat():            # a line every 30 s, so a watched log keeps moving
        while not done.wait(30.0):
            say(f"  ... {name}: running for {time.perf_counter() - t:.0f} s")
    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        out = fn()
    finally:
        done.set()
    stages.append((name, time.perf_counter() - t))
    say(f"Stage {len(stages)}/3: {name} done in {stages[-1][1]:.1f} s")
    return out

def own_peak_rss_mb():
    """This process's own peak RSS (MB): VmHWM, since ru_maxrss after a fork-exec can
    carry the parent's high-water mark on Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

# The two first stages are what estimate_rotations() would run lazily; run them one by
# one for progress in the log when this ASPIRE has them.
if hasattr(est, "build_clmatrix"):
    stage(f"common lines of {n * (n - 1) // 2} image pairs", est.build_clmatrix)
if hasattr(est, "syncmatrix_vote"):
    stage("synchronization matrix by voting", est.syncmatrix_vote)
ret = stage("rotations from the synchronization matrix", est.estimate_rotations)
rotations = est.rotations if getattr(est, "rotations", None) is not None else np.asarray(ret)
t2 = time.perf_counter()
np.save(out_path, np.asarray(rotations, dtype=np.float64))
json.dump(dict(aspire_version=aspire.__version__, numpy_version=np.__version__,
               n_images=n, image_size=int(images.shape[-1]), n_theta=int(n_theta),
               seed=seed, estimate_seconds=t2 - t1, import_seconds=t1 - t0,
               stages=stages,
               peak_rss_mb=own_peak_rss_mb()),
          open(info_path, "w"))
say(f"Rotations of {n} images estimated in {t2 - t1:.1f} s")
'''


class AspireUnavailable(RuntimeError):
    """No usable ASPIRE environment (the message says why and how to make one)."""


# ----------------------------------------------------------------------------- environment

def venv_python(venv):
    """The python of a virtual environment folder."""
    return os.path.join(venv, "bin", "python")


def _subprocess_env(python):
    """Environment for a subprocess run by ``python``: another interpreter must not see
    this one's PYTHONPATH/PYTHONHOME (e.g. Scipion's numpy 1.26 under a numpy 2 env)."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        env.pop("PYTHONPATH", None)
    return env


def has_aspire(python, timeout=60):
    """``(ok, reason)``: can ``python`` import ``aspire``? Checked without importing it
    (``importlib.util.find_spec``: fast, and leaves no ``logs/`` folder anywhere)."""
    if not python:
        return False, "no python given"
    if not os.path.isfile(python):
        return False, f"{python} does not exist"
    if not os.access(python, os.X_OK):
        return False, f"{python} is not executable"
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('aspire') else 3)"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True,
                           timeout=timeout, cwd=tempfile.gettempdir(),
                           env=_subprocess_env(python))
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{python} could not be run: {err}"
    if r.returncode == 3:
        return False, f"{python} has no 'aspire' package"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        return False, f"{python} failed ({r.returncode}): {tail[0]}"
    return True, ""


def aspire_in_this_env():
    """True when ``aspire`` is importable by this interpreter (not imported)."""
    return importlib.util.find_spec("aspire") is not None


def create_command(venv=None):
    """The shell command that makes a separate ASPIRE environment."""
    cmd = f"{sys.executable} -m orientlearn.core.peer_aspire create"
    if venv and os.path.abspath(venv) != os.path.abspath(DEFAULT_VENV):
        cmd += f" --venv {venv}"
    return cmd


def install_command():
    """The shell command that installs ASPIRE beside the plugin, in this environment."""
    return f'{sys.executable} -m pip install "{ASPIRE_REQUIREMENT}" numpy==1.26.1'


def find_aspire_python(explicit=None):
    """``(python, message)`` of the environment to run ASPIRE in.

    ``explicit`` (e.g. the ``ORIENTLEARN_ASPIRE_PYTHON`` variable) is used when non-empty;
    otherwise this interpreter if it has ``aspire``, otherwise the default venv. When
    none works, ``python`` is None and ``message`` says why and the exact commands that
    make one.
    """
    explicit = (explicit or "").strip()
    if explicit:
        ok, why = has_aspire(explicit)
        if ok:
            return explicit, f"{ASPIRE_PYTHON_VAR} = {explicit}"
        venv = os.path.dirname(os.path.dirname(explicit)) \
            if os.path.basename(os.path.dirname(explicit)) == "bin" else None
        fix = (f"create that environment with: {create_command(venv)}" if venv else
               f"make it name the python of an environment with ASPIRE ({create_command()} "
               f"makes one at {DEFAULT_VENV})")
        return None, (f"ASPIRE is not available: {ASPIRE_PYTHON_VAR} = {explicit}, but "
                      f"{why}. Either {fix}, or unset {ASPIRE_PYTHON_VAR} and install "
                      f"ASPIRE beside the plugin: {install_command()}")
    if aspire_in_this_env():
        return sys.executable, "ASPIRE installed beside the plugin"
    python = venv_python(DEFAULT_VENV)
    ok, why = has_aspire(python)
    if ok:
        return python, f"ASPIRE environment {DEFAULT_VENV}"
    return None, (f"ASPIRE is not installed for orientlearn. Create its environment with: "
                  f"{create_command()}  (a separate venv at {DEFAULT_VENV}, found "
                  f"automatically; elsewhere: add --venv DIR and set {ASPIRE_PYTHON_VAR} "
                  f"to DIR/bin/python). Or install it beside the plugin: {install_command()}")


def ensure_aspire_venv(venv=DEFAULT_VENV, log=print, timeout=1800, requirement=ASPIRE_REQUIREMENT):
    """Python of a venv with ASPIRE; creates the venv if needed (needs PyPI access).

    Raises ``AspireUnavailable`` with the reason (no network, pip failure...).
    """
    python = venv_python(venv)
    if has_aspire(python)[0]:
        return python
    log(f"creating the ASPIRE venv at {venv} (python -m venv + pip install "
        f"'{requirement}'), a few minutes...")
    t = time.perf_counter()
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [[base, "-m", "venv", venv],
             [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             [python, "-m", "pip", "install", "--quiet", requirement]]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               cwd=tempfile.gettempdir(), env=_subprocess_env(python))
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AspireUnavailable(f"{' '.join(cmd)} failed: {err}") from err
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
            raise AspireUnavailable(f"{' '.join(cmd)} exited {r.returncode}:\n{tail}")
    ok, why = has_aspire(python)
    if not ok:
        raise AspireUnavailable(f"aspire installed in {venv} but not found: {why}")
    log(f"ASPIRE venv ready in {time.perf_counter() - t:.0f} s")
    return python


# ----------------------------------------------------------------------------- running

_PROGRESS_BAR = re.compile(r"\d+%\|")


def _stream(proc, log, interval):
    """Forward a subprocess's output to ``log`` line by line; progress bars (``\\r``
    updates, tqdm) at most every ``interval`` seconds. Returns the last lines."""
    tail, buf, last_bar, pending_bar = [], b"", 0.0, None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"([\r\n])", buf)
        buf = parts.pop()               # unterminated rest
        for text, sep in zip(parts[0::2], parts[1::2]):
            line = text.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            tail = (tail + [line])[-40:]
            if sep == b"\r" or _PROGRESS_BAR.search(line):
                now = time.monotonic()
                if now - last_bar >= interval:
                    log(line)
                    last_bar, pending_bar = now, None
                else:
                    pending_bar = line
            else:
                if pending_bar:
                    log(pending_bar)
                    pending_bar = None
                log(line)
    rest = buf.decode("utf-8", "replace").rstrip()
    for line in ([pending_bar] if pending_bar else []) + ([rest] if rest else []):
        log(line)
        tail = (tail + [line])[-40:]
    return tail


def run_script(python, args, workdir, log=None, progress_interval=10.0, expected=()):
    """Run ``python args...`` with its cwd in ``workdir`` (ASPIRE writes ``logs/`` there),
    streaming its output to ``log``. ``expected``: files it must write, the last one a JSON
    info file, returned as a dict with ``wall_seconds`` (interpreter start and imports
    included). Raises ``AspireUnavailable`` when ``python`` cannot start, ``RuntimeError``
    with the output's tail when it fails or leaves an expected file unwritten."""
    log = log or (lambda line: None)
    t = time.perf_counter()
    try:
        proc = subprocess.Popen([python, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=workdir,
                                env=_subprocess_env(python))
    except OSError as err:
        raise AspireUnavailable(f"could not start {python}: {err}") from err
    with proc:
        tail = _stream(proc, log, progress_interval)
        rc = proc.wait()
    missing = [p for p in expected if not os.path.exists(p)]
    if rc != 0 or missing:
        raise RuntimeError(f"ASPIRE run failed (exit {rc}"
                           + (f"; not written: {', '.join(missing)}" if missing else "")
                           + "):\n" + "\n".join(tail[-25:]))
    info = {}
    if expected:
        with open(expected[-1]) as fh:
            info = json.load(fh)
    info["wall_seconds"] = time.perf_counter() - t
    return info


def run_aspire(python, images, pixel_size, n_theta=360, workdir=None, tag="", seed=None,
               log=None, progress_interval=10.0):
    """CLSyncVoting on ``images (N, S, S)`` in the ASPIRE environment of ``python``.

    Returns ``(rotations (N, 3, 3) in ASPIRE's convention, info dict)``;
    ``info['wall_seconds']`` includes the interpreter start and imports. The runner, the
    ``.npy`` files and ASPIRE's ``logs/`` go to ``workdir`` (a new temp folder when None),
    which is also the subprocess's cwd. ``log(line)`` receives its output as it comes
    (stage messages, ASPIRE's log, progress bars every ``progress_interval`` s).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, S, S) square, got {images.shape}")
    if len(images) < 3:
        raise ValueError("common lines need at least 3 images")
    workdir = workdir or tempfile.mkdtemp(prefix="orientlearn-aspire-")
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    runner = os.path.join(workdir, RUNNER_FILE)
    with open(runner, "w") as fh:
        fh.write(ASPIRE_RUNNER)
    prefix = f"{tag}_" if tag else ""
    paths = [os.path.join(workdir, prefix + name)
             for name in (IMAGES_FILE, ROTATIONS_FILE, INFO_FILE)]
    for p in paths[1:]:
        if os.path.exists(p):
            os.remove(p)
    np.save(paths[0], np.ascontiguousarray(images, dtype=np.float32))
    cmd = [python, runner, *paths, repr(float(pixel_size)), str(int(n_theta))]
    if seed is not None:
        cmd.append(str(int(seed)))
    info = run_script(python, cmd[1:], workdir, log=log, progress_interval=progress_interval,
                      expected=paths[1:])
    rotations = np.load(paths[1])
    if rotations.shape != (len(images), 3, 3) or not np.all(np.isfinite(rotations)):
        raise RuntimeError(f"ASPIRE returned rotations of shape {rotations.shape} "
                           f"(finite: {np.all(np.isfinite(rotations))}) for {len(images)} images")
    return rotations, info


# ----------------------------------------------------------------------------- conventions

def _transforms():
    from .graph import image_transforms
    return image_transforms()


def convention_candidates():
    """[(description, L index, conjugate)] for ``q = L c(q_aspire)``."""
    _, names = _transforms()
    return [(f"{'conj, ' if conj else ''}{names[k]}", k, conj)
            for k in range(len(names)) for conj in (False, True)]


def convention_name(k, conj):
    return [c[0] for c in convention_candidates() if c[1:] == (k, conj)][0]


def convert(q_aspire, k, conj):
    """Our quaternions ``L_k c(q_aspire)`` of ASPIRE's (as quaternions)."""
    transforms, _ = _transforms()
    q = geometry.conjugate(q_aspire) if conj else q_aspire
    return geometry.normalize(geometry.multiply(transforms[k], q))


def rotations_to_quaternions(rotations, convention=DEFAULT_CONVENTION):
    """ASPIRE's rotation matrices ``(N, 3, 3)`` -> our unit quaternions ``(N, 4)``."""
    return convert(geometry.matrix_to_quaternion(np.asarray(rotations, dtype=np.float64)),
                   *convention)


def quaternions_to_rotations(q, convention=DEFAULT_CONVENTION):
    """Inverse of ``rotations_to_quaternions``: our quaternions -> ASPIRE's matrices."""
    transforms, _ = _transforms()
    k, conj = convention
    qa = geometry.multiply(geometry.conjugate(transforms[k]), np.asarray(q, dtype=np.float64))
    if conj:
        qa = geometry.conjugate(qa)
    return geometry.quaternion_to_matrix(qa)


def choose_convention(q_true, q_aspire):
    """``(mean error, description, k, conj)``: the candidate conversion with the smallest
    rotation + handedness mean error against known orientations."""
    from .alignment import align_rotation_handedness
    best = None
    for desc, k, conj in convention_candidates():
        info, _ = align_rotation_handedness(q_true, convert(q_aspire, k, conj))
        # ties (rot0 vs rot180: the same up to handedness) keep the earlier candidate
        if best is None or info["mean_error"] < best[0] - 1e-9:
            best = (info["mean_error"], desc, k, conj)
    return best


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m orientlearn.core.peer_aspire",
        description="The ASPIRE environment of orientlearn's 'common lines (ASPIRE)' "
                    "protocol and of benchmarks/peers.py.")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help=f"make a separate venv with {ASPIRE_REQUIREMENT} "
                                      "(needs PyPI access; about 0.7 GB)")
    c.add_argument("--venv", default=DEFAULT_VENV, help=f"where (default {DEFAULT_VENV})")
    c.add_argument("--requirement", default=ASPIRE_REQUIREMENT,
                   help="pip requirement to install (default %(default)s)")
    sub.add_parser("check", help="say which ASPIRE environment the protocol would use")
    args = ap.parse_args(argv)
    if args.command == "create":
        try:
            python = ensure_aspire_venv(args.venv, requirement=args.requirement)
        except AspireUnavailable as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return 2
        print(f"ASPIRE environment ready: {python}")
        if os.path.abspath(args.venv) != os.path.abspath(DEFAULT_VENV):
            print(f"Set {ASPIRE_PYTHON_VAR}={python} (Scipion config or environment) so the "
                  "protocol finds it.")
        return 0
    python, msg = find_aspire_python(os.environ.get(ASPIRE_PYTHON_VAR))
    print(f"ASPIRE python: {python} ({msg})" if python else msg)
    return 0 if python else 1


if __name__ == "__main__":
    sys.exit(main())
