"""What the scripts of ``benchmarks/`` share, so that they never import each other.

* the report: ``BenchmarkRun`` (start time, CPU load) writes the footer every table
  carries (machine, CPU load, date, git commit, peak RSS, the command), ``write_report``
  prints it and writes it to ``--out``;
* the paper's setting: the bundled 5j0n map at a box size (``volume_at_size``), the
  paper's split (``split_sizes``, ``paper_split``), its particles
  (``simulate_like_paper``), and small helpers (``support_radius``,
  ``downsampled_noise_factor``);
* ``run_benchmark_script``: run a script as a user would (the smoke tests use it).

Nothing here runs at import; TensorFlow is imported only by ``machine_description``.
"""
import datetime
import os
import platform
import resource
import shlex
import subprocess
import sys

import numpy as np

from .core import geometry, image_ops, model_io, simulation, volumes
from .core.threads import usable_cores

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: The checkout the package runs from (where ``benchmarks/`` is, in a source checkout).
REPO = os.path.dirname(PACKAGE_DIR)
BENCHMARKS_DIR = os.path.join(REPO, "benchmarks")
#: The bundled map of the paper's benchmark (5j0n, 3.667 A/voxel).
MAP_PATH = os.path.join(PACKAGE_DIR, "data", "5j0n.mrc")
#: The paper's split of its 5,000 particles: train, validation, test.
PAPER_SPLIT = (2512, 838, 1650)


# ---------------------------------------------------------------------------- the report

def peak_rss_mb():
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Resident memory of this process now, MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return float("nan")


def git_commit():
    """Short commit of the checkout, with ``(+ uncommitted changes)``; ``unknown`` outside
    a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        return (head or "unknown") + (" (+ uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description():
    """Platform, Python, CPUs, TensorFlow and the GPUs it sees (imports TensorFlow)."""
    import tensorflow as tf
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return dict(platform=platform.platform(), python=platform.python_version(),
                cpus=os.cpu_count(), tensorflow=tf.__version__,
                gpu=", ".join(gpus) if gpus else "none (TF sees no GPU)")


def _load_average():
    try:
        return os.getloadavg()[0]
    except OSError:                                    # pragma: no cover
        return float("nan")


def score_class_averages(info, q_true, true_map, pixel_size, diameter_A, settings=None):
    """How good ``common_lines_map``'s class averages are, using the truth only to score:
    the median error of each average's orientation against that of the particle it is
    centred on (``info['class_centres']``; rotation + hand fitted; rad), and the Pearson
    correlation with ``true_map`` (on the particles' grid, ``pixel_size`` A/px) of the
    averages inverted with their orientations put in the truth's frame (the first map's
    own frame hides how close it is). ``q_true``: ``(M, 4)`` of all particles."""
    from .core import alignment, common_lines_map
    q_centres = np.asarray(q_true)[info["class_centres"]]
    _, q_al = alignment.align_rotation_handedness(q_centres, info["quaternions"])
    err = float(np.median(alignment.orientation_errors(q_centres, q_al)))
    framed = common_lines_map.invert_averages(info["averages"], q_al, info["pixel_size"],
                                              diameter_A, settings)
    if framed.shape != np.shape(true_map):
        framed = volumes.resample_to_grid(framed, info["pixel_size"], np.shape(true_map)[0],
                                          pixel_size)
    cc = float(np.corrcoef(np.ravel(framed), np.ravel(true_map))[0, 1])
    return err, cc


class BenchmarkRun:
    """One run of a benchmark script: when it started, the CPU load then, and the footer
    of its report.

    ``script``: the file name under ``benchmarks/`` (``"paper.py"``); ``argv``: its
    arguments (default ``sys.argv[1:]``); ``tensorflow``: whether the machine line names
    TensorFlow and the GPUs it sees (imports TensorFlow).
    """

    def __init__(self, script, argv=None, tensorflow=False):
        self.script = script
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.tensorflow = tensorflow
        self.started = datetime.datetime.now().astimezone()
        self.load_start = _load_average()

    def footer(self, note="", date_extra="", peak_rss=True):
        """The footer lines: machine, CPU load at start / end, optional note, date + git
        commit (+ peak RSS of this process, + ``date_extra``), the command."""
        import scipy
        load_end = _load_average()
        ncpu = os.cpu_count() or 1
        machine = f"- machine: {platform.platform()}, {cpu_model()}, {ncpu} CPUs"
        if self.tensorflow:
            m = machine_description()
            machine += f", TensorFlow {m['tensorflow']}, GPU: {m['gpu']}"
        machine += (f"; {usable_cores()} usable; Python {platform.python_version()}, "
                    f"numpy {np.__version__}, scipy {scipy.__version__}")
        shared = max(self.load_start, load_end) > 0.5 * ncpu
        lines = [machine,
                 f"- CPU load average (1 min) at start / end: {self.load_start:.2f} / "
                 f"{load_end:.2f} on {ncpu} CPUs"
                 + (" — the CPU was SHARED with other work, times are pessimistic"
                    if shared else "")]
        if note:
            lines.append(f"- note: {note}")
        date = (f"- date: {self.started.isoformat(timespec='seconds')}; "
                f"git commit: {git_commit()}")
        if peak_rss:
            date += f"; peak RSS: {peak_rss_mb():.0f} MB"
        if date_extra:
            date += f"; {date_extra}"
        lines.append(date)
        lines.append(f"- command: python benchmarks/{self.script} {shlex.join(self.argv)}"
                     .rstrip())
        return lines


def write_report(text, out=None):
    """Print a benchmark's report and, with ``out``, write the same text to that file."""
    print(text, end="")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text)


# ------------------------------------------------------------------- the paper's setting

def split_sizes(n):
    """The paper's split proportions scaled to ``n`` particles: (train, val, test)."""
    total = sum(PAPER_SPLIT)
    n_test = int(round(n * PAPER_SPLIT[2] / total))
    n_val = int(round(n * PAPER_SPLIT[1] / total))
    return n - n_val - n_test, n_val, n_test


def paper_split(n, seed):
    """Indices (train, validation, test) as ``benchmarks/paper.py`` uses them: test = the
    last ``n_test`` particles; validation = what ``train_distance_model`` holds out of the
    first ``n_train + n_val`` with ``validation_fraction = n_val / (n_train + n_val)``."""
    n_train, n_val, n_test = split_sizes(n)
    n_fit = n_train + n_val
    train, val = model_io.train_validation_split(n_fit, n_val / n_fit, seed=seed)[0]
    return train, val, np.arange(n_fit, n)


def volume_at_size(size, map_path=MAP_PATH):
    """The true map in a ``size`` box and its voxel size (A).

    Larger boxes zero-pad the map (voxel size kept, the paper's 116 px at 3.667 A);
    smaller ones Fourier-downsample it (coarser voxels)."""
    vol, voxel = volumes.read_volume(map_path)
    n0 = vol.shape[0]
    if size >= n0:
        return volumes.crop_or_pad_volume(vol, size), voxel
    return volumes.downsample_volume(vol, size), voxel * n0 / size


#: Atomic models of the unseen-protein benchmark, in ``MDAnalysisTests``' data folder
#: (a benchmarks extra); ``core.generalist`` never trains on them.
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


def unseen_protein_maps(user_box, only=None):
    """The unseen-protein benchmark's maps at the users' settings: the 5j0n map and the
    ``ATOMIC_TEST_PROTEINS`` (gemmi, ``core.atoms``; the particle's diameter half the box).
    ``only``: names to keep (None: all). Returns ``[(name, volume (B, B, B), voxel_size,
    diameter_A)]``, ``B = user_box``."""
    from .core import atoms
    out = []
    vol, voxel = volumes.read_volume(MAP_PATH)
    diameter = support_diameter_A(vol, voxel)
    n = vol.shape[0]
    out.append(("5j0n (map)", volumes.downsample_volume(vol, user_box), voxel * n / user_box,
                diameter))
    for f in ATOMIC_TEST_PROTEINS:
        if only and f.split(".")[0] not in only:
            continue
        st = atoms.read_structure(os.path.join(mdanalysis_data(), f))
        _, radius = atoms.molecule_extent(st)
        diameter = 2.0 * radius
        pixel_size = diameter / (0.5 * user_box)
        m = atoms.structure_to_map(st, pixel_size, box=user_box)
        out.append((f.split(".")[0], m.volume, pixel_size, diameter))
    return [m for m in out if not only or m[0].split(" ")[0] in only]


def downsampled_noise_factor(size, new_size, n_images=64, seed=0):
    """Variance of unit white noise after ``image_ops.downsample`` from ``size`` to
    ``new_size`` px (about ``(new_size / size)^2``), measured on a fixed noise sample."""
    if new_size == size:
        return 1.0
    noise = np.random.default_rng(seed).standard_normal((n_images, size, size))
    return float(np.var(image_ops.downsample(noise.astype(np.float32), new_size)))


def support_radius(vol, rel=1e-2):
    """Radius (voxels) about the box centre enclosing the voxels above ``rel * max``."""
    n = vol.shape[0]
    z, y, x = np.nonzero(vol > rel * vol.max())
    c = n // 2
    return float(np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2).max())


def log(message):
    """A benchmark's progress line, on standard error (the report goes to standard output)."""
    print(message, file=sys.stderr, flush=True)


def run_noise_settings(args, run_setting):
    """The paper's map in an ``args.size`` box (``args.map``), then
    ``run_setting(args, sigma2, true_map, pixel_size, log)`` for each of ``args.sigma2``.
    Returns ``(results, pixel_size)``, ``results`` a list of ``(sigma2, result)``."""
    true_map, pixel_size = volume_at_size(args.size, args.map)
    log(f"map {args.map}: box {args.size}, {pixel_size:.3f} A/px; net on {args.net_size} px")
    results = []
    for sigma2 in args.sigma2:
        log(f"setting sigma2={sigma2:g}")
        results.append((sigma2, run_setting(args, sigma2, true_map, pixel_size, log)))
    return results, pixel_size


def setting_header(title, args, pixel_size):
    """The first line of a report on the paper's setting: ``## orientlearn <title>: 5j0n,
    <n> particles, <size> px at <pixel> Å/px (net on <net> px)`` [, CTF + shifts] [SMOKE]."""
    return (f"## orientlearn {title}: 5j0n, {args.n_particles} particles, "
            f"{args.size} px at {pixel_size:.3f} Å/px (net on {args.net_size} px)"
            + (", CTF + shifts" if args.ctf_shifts else "")
            + (" [SMOKE RUN: numbers meaningless]" if args.smoke else ""))


def simulate_like_paper(args, sigma2, true_map, pixel_size, with_clean=False):
    """The particles of ``benchmarks/paper.py``: the same ``simulate_particles`` call
    (``args.n_particles``, ``args.seed``, noise ``sigma2`` (0: none), CTF and shifts up to
    ``args.max_shift`` when ``args.ctf_shifts``) and the same Fourier downsampling to
    ``args.net_size`` for the network. Returns ``(net_images, quaternions, net_clean,
    simulation)``: ``net_clean`` (before noise) is None unless ``with_clean`` and
    ``sigma2``; ``simulation`` is ``simulate_particles``' dict (full-size images)."""
    sim = simulation.simulate_particles(
        true_map, args.n_particles, sigma2=sigma2 or None, seed=args.seed,
        voxel_size=pixel_size, ctf=True if args.ctf_shifts else None,
        max_shift=args.max_shift if args.ctf_shifts else 0.0,
        return_clean=bool(with_clean and sigma2))

    def to_net(x):
        return image_ops.downsample(x, args.net_size) if args.net_size != x.shape[-1] else x
    clean = None if sim["clean"] is None else to_net(sim["clean"])
    return to_net(sim["images"]), sim["quaternions"], clean, sim


def ctf_stack(params, size, pixel_size):
    """CTF images ``(M, size, size)`` (``np.fft.fft2`` layout) of per-particle CTF
    parameters ``params`` (``simulate_particles``' ``ctf``)."""
    from .core import ctf
    keys = ("defocus_u", "defocus_v", "astig_angle")
    return ctf.ctf_2d_batch(size, pixel_size, *(params[k] for k in keys),
                            **{k: v for k, v in params.items() if k not in keys})


def score_against_truth(images, pixel_size, ctfs, q, shifts, q_true, shifts_true, true_map,
                        mask_radius):
    """How far estimated orientations ``q (M, 4)`` and offsets ``shifts (M, 2)`` px are
    from the simulation's truth, using the truth only to score: the median orientation
    error after the best global rotation and hand, the median offset error after the best
    frame translation (a map's origin is arbitrary), and FSC 0.5 (A) against
    ``true_map`` of the reconstruction with the aligned orientations and offsets (best
    hand). Returns a dict ``median_error``, ``mean_error`` (rad), ``median_shift_error``
    (px), ``fsc05`` (A)."""
    from .core import alignment, fsc, reconstruction
    _, q_al = alignment.align_rotation_handedness(q_true, q)
    err = alignment.orientation_errors(q_true, q_al)
    c, shift_err = alignment.fit_frame_translation(q, shifts, shifts_true)
    rot = geometry.quaternion_to_matrix(q)
    shifts_true_frame = shifts - np.einsum("mij,j->mi", rot[:, :2, :], c)
    rec = reconstruction.reconstruct_fourier(images, geometry.quaternion_to_matrix(q_al),
                                             shifts=shifts_true_frame, ctfs=ctfs,
                                             mask_radius=mask_radius)
    freq, values, _ = fsc.fsc_with_handedness(rec, true_map, pixel_size)
    return dict(median_error=float(np.median(err)), mean_error=float(np.mean(err)),
                median_shift_error=float(np.median(shift_err)),
                fsc05=float(fsc.resolution_at(freq, values, 0.5)))


def quaternion_features(q, transforms, dtype=np.float64):
    """Synthetic per-transform features ``(K, N, 16)`` of orientations ``q`` ``(N, 4)``
    under the image-side transforms ``transforms`` ``(K, 4)``, whose angles are a monotone
    function of d_q: ``Q0 = (g q)(g q)^T - I/4`` (sign-free, unit norm after scaling). The
    angle ``a`` between the features of ``q1`` and ``q2`` obeys ``cos a = (1 + 2 cos d_q)
    / 3``: ``network.angle_to_distance(a, "rotation")`` gives d_q exactly. What the
    recovery benchmark and tests use in place of a network's embedding."""
    out = np.empty((len(transforms), len(q), 16), dtype)
    for k, g in enumerate(transforms):
        gq = geometry.multiply(g, q)
        Q0 = np.einsum("na,nb->nab", gq, gq) - np.eye(4) / 4
        out[k] = Q0.reshape(len(q), 16) / np.sqrt(0.75)
    return out


# ------------------------------------------------------------------ running the scripts

def run_benchmark_script(script, *args, cwd=None, timeout=300, smoke=True):
    """``python benchmarks/<script> [--smoke] <args>`` in a child process, as a user runs
    it (``PYTHONPATH`` = the checkout); raises ``RuntimeError`` with the end of its
    standard error unless it exits 0, returns its standard output (the report)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH"))
                                          if p))
    command = [sys.executable, os.path.join(BENCHMARKS_DIR, script),
               *(["--smoke"] if smoke else []), *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(cwd or REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited with {proc.returncode}:\n"
                           f"{proc.stderr[-4000:]}")
    return proc.stdout
