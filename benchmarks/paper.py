"""The paper's benchmark (Banjac et al. 2021, 5j0n) with the core API; no Scipion needed.

Per noise setting: simulate 5,000 projections of 5j0n (uniform SO(3), 116 px at
3.667 A/px: the map zero-padded to the box, as in the paper), split them as the paper
did (2,512 train / 838 validation / 1,650 test), train the distance network on
train + validation (on a Fourier-downsampled copy, ``--net-size``), embed the test
particles under the detector transforms and recover them with the recover protocol's
pipeline calls (``pipeline.embed_particles`` + ``recover_from_embedding`` =
``recover_particles``), recover
their orientations, compare with the truth (E_OR after O(4) alignment, the paper's
number, and after rotation + handedness only, what reconstruction sees), reconstruct
the test particles at full size with the rotation-aligned orientations and compute the
FSC against the true map. Prints one markdown table with the paper's numbers beside ours.

Usage::

    python benchmarks/paper.py                       # the full benchmark (long on a CPU)
    python benchmarks/paper.py --sigma2 0 --train-minutes 10 --out bench.md
    python benchmarks/paper.py --smoke               # tiny, < 60 s, checks the pipeline

``--sigma2 0`` means noiseless. Training stops at ``--epochs`` or early stopping, or after
the epoch during which ``--train-minutes`` ran out (then the weights are those of that
last epoch, not of the best one).
"""
import argparse
import os
import sys
import time

import numpy as np

from orientlearn.benchmarking import (
    MAP_PATH,
    BenchmarkRun,
    downsampled_noise_factor,
    peak_rss_mb,
    run_noise_settings,
    setting_header,
    split_sizes,
    support_radius,
    write_report,
)
from orientlearn.core import (
    alignment,
    alignment_search,
    centering,
    ctf,
    fsc,
    geometry,
    image_ops,
    model_io,
    network,
    pipeline,
    reconstruction,
    refinement,
    simulation,
    training,
)
from orientlearn.core.model import DistanceModel
from orientlearn.core.source import ArraySource

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Paper, 5j0n: median E_OR (rad) and FSC0.5 (A) by sigma^2.
PAPER = {0.0: dict(median=0.199, fsc05=12.2), 16.0: dict(median=0.255, fsc05=15.2)}


class _TimeUp(Exception):
    """Raised from the training progress callback when the time budget is spent."""


class _Loaded(Exception):
    """Raised instead of training when ``--load-model`` gave a saved model."""


def _model_path(folder, sigma2, net_size):
    """Where ``--save-model`` writes (and ``--load-model`` reads) a setting's model."""
    return os.path.join(folder, f"5j0n_sigma2_{sigma2:g}_{net_size}px.keras")


def run_setting(args, sigma2, true_map, pixel_size, log):
    """One noise setting, all steps. Returns a dict of results."""
    res, times = {}, {}
    n_train, n_val, n_test = split_sizes(args.n_particles)
    res["split"] = f"{n_train} / {n_val} / {n_test}"

    t = time.perf_counter()
    sim = simulation.simulate_particles(
        true_map, args.n_particles, sigma2=sigma2 or None, seed=args.seed,
        voxel_size=pixel_size, ctf=True if args.ctf_shifts else None,
        max_shift=args.max_shift if args.ctf_shifts else 0.0,
        return_clean=bool(sigma2) and args.train_noise == "fresh")
    images, quats = sim["images"], sim["quaternions"]
    net_images = (image_ops.downsample(images, args.net_size)
                  if args.net_size != images.shape[-1] else images)
    # Training images: the noisy images themselves ("fixed", the paper's protocol), or the
    # clean projections of the same training particles with fresh noise of the same level
    # drawn for every batch ("fresh"; the training set is simulated, so its clean images
    # exist). The noise variance is carried through the downsampling to the net's size.
    train_images, augmentation = net_images, None
    if sim["clean"] is not None:
        train_images = (image_ops.downsample(sim["clean"], args.net_size)
                        if args.net_size != images.shape[-1] else sim["clean"])
        s2_net = sigma2 * downsampled_noise_factor(images.shape[-1], args.net_size)
        augmentation = dict(noise_variance=(s2_net, s2_net))
        del sim["clean"]
    times["simulate"] = time.perf_counter() - t
    res["rss_simulate"] = peak_rss_mb()
    fit = slice(0, n_train + n_val)
    test = slice(n_train + n_val, args.n_particles)
    log(f"  simulated {args.n_particles} particles in {times['simulate']:.1f} s")

    # --- train on train + validation (validation_fraction = the paper's 838 / 3,350)
    t = time.perf_counter()
    deadline = t + 60.0 * args.train_minutes if args.train_minutes else None
    val_losses = []

    def on_epoch(epoch, n_epochs, logs):
        val_losses.append(float(logs["val_loss"]))
        log(f"  epoch {epoch}/{n_epochs}: {logs}")
        if deadline is not None and time.perf_counter() > deadline:
            raise _TimeUp()

    model = network.build_embedding_network(args.architecture, args.n_features,
                                             args.width, seed=args.seed)
    stopped_by_time = False
    loaded = _model_path(args.load_model, sigma2, args.net_size) if args.load_model else None
    try:
        if loaded:
            model, meta = model_io.load_distance_model(loaded)
            raise _Loaded(meta)
        model, history = training.train_distance_model(
            train_images[fit], quats[fit], architecture=args.architecture,
            augmentation=augmentation, head=args.head,
            epochs=args.epochs, batch_size=args.batch_size,
            validation_fraction=n_val / (n_train + n_val),
            steps_per_epoch=args.steps_per_epoch, seed=args.seed, progress=on_epoch,
            model=model)
        res["l_de_val"] = history["best_val_loss"]
        res["epochs"] = f"{len(history['loss'])} (best {history['best_epoch'] + 1})"
    except _Loaded:
        res["l_de_val"] = float("nan")
        res["epochs"] = f"loaded from {loaded}"
        log(f"  loaded the model {loaded} (no training)")
    except _TimeUp:
        stopped_by_time = True
        res["l_de_val"] = min(val_losses)
        res["epochs"] = f"{len(val_losses)} (time budget; last weights)"
    times["train"] = time.perf_counter() - t
    res["rss_train"] = peak_rss_mb()
    if args.save_model:
        path = _model_path(args.save_model, sigma2, args.net_size)
        model_io.save_distance_model(model, path, dict(
            image_size=args.net_size, pixel_size=pixel_size * args.size / args.net_size,
            architecture=args.architecture, symmetry="C1", sigma2=sigma2, head=args.head,
            source="benchmarks/paper.py"))
        log(f"  saved the model to {path}")
    res["stopped_by_time"] = stopped_by_time

    # --- embed the test particles under every image-side transform, recover: the
    # pipeline calls of the recover protocol (recover_particles = these two)
    t = time.perf_counter()
    net_model = DistanceModel(model, dict(image_size=args.net_size,
                                          pixel_size=pixel_size * args.size / args.net_size,
                                          head=args.head))
    test_source = ArraySource(net_images[test], net_model.pixel_size)
    transforms = pipeline.detector_transforms()
    features = pipeline.embed_particles(test_source, net_model, transforms)
    times["embed"] = time.perf_counter() - t

    # --- recover orientations
    t = time.perf_counter()
    recovered = pipeline.recover_from_embedding(features, transforms, net_model.distance_map,
                                                seed=args.seed, n_steps=args.recovery_steps)
    q_est = recovered.quaternions
    times["recover"] = time.perf_counter() - t
    res["l_or"] = recovered.loss
    res["rss_recover"] = peak_rss_mb()

    # --- compare with the truth
    t = time.perf_counter()
    q_true = quats[test]
    cmp = alignment.compare_orientations(q_true, q_est)
    times["align"] = time.perf_counter() - t
    for key in ("o4_median", "o4_mean", "rot_median", "rot_mean", "random_median"):
        res[key] = cmp[key]
    res["flipped"] = cmp["rot_flipped"]

    # --- reconstruct the test particles at full size; FSC against the true map
    t = time.perf_counter()
    test_images = images[test]
    ctfs, test_ctf = None, None
    if args.ctf_shifts:
        # The CTF parameters a user has (CTFFIND/Gctf estimates); NO true shift is used:
        # the offsets come from the product (start_offsets, then refinement).
        p = sim["ctf"]
        test_ctf = estimated_ctf(p, test, args.defocus_error, args.seed)
        du, dv, ang = (test_ctf[k] for k in ("defocus_u", "defocus_v", "astig_angle"))

        def ctfs(idx, size):
            return ctf.ctf_2d_batch(size, pixel_size, du[idx], dv[idx], ang[idx],
                                        voltage=p["voltage"], cs=p["cs"],
                                        amplitude_contrast=p["amplitude_contrast"],
                                        phase_shift=p["phase_shift"])
    mask_radius = min(true_map.shape[0] / 2 - 1, support_radius(true_map) + 2)
    res["mask_radius"] = mask_radius
    start_shifts = None
    if args.ctf_shifts:
        t_start = time.perf_counter()
        start_shifts = start_offsets(args, test_images, pixel_size, test_ctf, mask_radius)
        times["centre"] = time.perf_counter() - t_start
        _, err = alignment.fit_frame_translation(q_est, start_shifts, sim["shifts"][test])
        res["shift_err_start"] = float(np.median(err))
    vol = reconstruction.reconstruct_fourier(test_images, cmp["rot_aligned"], shifts=start_shifts,
                                             ctfs=ctfs, mask_radius=mask_radius)
    freq, fsc_vals, _ = fsc.fsc_with_handedness(vol, true_map, pixel_size)
    res["fsc05"] = fsc.resolution_at(freq, fsc_vals, 0.5)
    res["fsc0143"] = fsc.resolution_at(freq, fsc_vals, 0.143)
    times["reconstruct"] = time.perf_counter() - t
    if not args.no_reference:
        # The ideal: true orientations and (with --ctf-shifts) true offsets.
        vol_true = reconstruction.reconstruct_fourier(
            test_images, q_true, shifts=sim["shifts"][test] if args.ctf_shifts else None,
            ctfs=ctfs, mask_radius=mask_radius)
        freq, fsc_vals = fsc.fsc(vol_true, true_map, pixel_size)
        res["fsc05_true_orient"] = fsc.resolution_at(freq, fsc_vals, 0.5)
    if args.ctf_shifts and args.refine_iterations > 0:
        t = time.perf_counter()
        res.update(refine_and_measure(args, test_images, pixel_size, q_est, start_shifts,
                                      test_ctf, ctfs, mask_radius, q_true,
                                      sim["shifts"][test], true_map, log))
        times["refine + evaluate"] = time.perf_counter() - t
    res["rss_reconstruct"] = peak_rss_mb()
    times["total"] = sum(times.values())
    res["times"] = times
    return res


def estimated_ctf(params, indices, defocus_error, seed):
    """The CTF parameters of particles ``indices`` as a user has them: CTF estimation
    (CTFFIND, Gctf) is off by some tens of nm in defocus, so each particle's ``defocus_u``
    and ``defocus_v`` (A) get one common error drawn from ``N(0, defocus_error^2)``
    (seeded); the angle and the scalars are kept."""
    per_particle = ("defocus_u", "defocus_v", "astig_angle")
    out = {k: (np.asarray(v)[indices] if k in per_particle else v) for k, v in params.items()}
    if defocus_error > 0:
        n = len(out["defocus_u"])          # indices may be a slice
        error = np.random.default_rng([seed, 17]).normal(0.0, defocus_error, n)
        out["defocus_u"] = out["defocus_u"] + error
        out["defocus_v"] = out["defocus_v"] + error
    return out


def start_offsets(args, images, pixel_size, ctf_params, mask_radius):
    """The particles' starting offsets as a user gets them: zero (as picked) or the
    reference-free centre of mass (``centering.centre_particles``)."""
    if args.start_shifts == "zero":
        return np.zeros((len(images), 2))
    particles = alignment_search.ParticleSpectra(images, pixel_size, ctf=ctf_params)
    offsets, _ = centering.centre_particles(particles, args.refine_shift_range, 2 * mask_radius)
    return offsets


def refine_and_measure(args, images, pixel_size, q_est, start_shifts, ctf_params, ctfs,
                       mask_radius, q_true, true_shifts, true_map, log):
    """Local refinement of the recovered orientations and the product's offsets (the
    refine protocol's call), then its errors against the truth: orientations after
    rotation + handedness alignment, offsets after the 3-D frame translation (a map's
    origin is arbitrary: ``alignment.fit_frame_translation``), and the FSC of the map
    reconstructed in the true frame against the true map."""
    settings = refinement.RefinementSettings(
        mask_radius=mask_radius, shift_range=args.refine_shift_range,
        max_iterations=args.refine_iterations, seed=args.seed)
    t = time.perf_counter()
    cpu = time.process_time()
    result = refinement.refine_particles(images, pixel_size, q_est, shifts=start_shifts,
                                         ctf=ctf_params, settings=settings, log=log)
    out = dict(refine_seconds=time.perf_counter() - t, refine_cpu=time.process_time() - cpu,
               refine_iterations=len(result.history),
               refine_half_fsc05=result.resolution_05, refine_half_fsc0143=result.resolution)
    cmp = alignment.compare_orientations(q_true, result.quaternions)
    out["refined_rot_median"], out["refined_rot_mean"] = cmp["rot_median"], cmp["rot_mean"]
    c, err = alignment.fit_frame_translation(result.quaternions, result.shifts, true_shifts)
    out["refined_shift_err"] = float(np.median(err))
    out["frame_translation"] = float(np.linalg.norm(c))
    # The refined particles' map, moved into the true frame (rotation, hand, origin).
    R = geometry.quaternion_to_matrix(result.quaternions)
    in_true_frame = result.shifts - np.einsum("mij,j->mi", R[:, :2, :], c)
    vol = reconstruction.reconstruct_fourier(images, cmp["rot_aligned"], shifts=in_true_frame,
                                             ctfs=ctfs, mask_radius=mask_radius)
    freq, values, _ = fsc.fsc_with_handedness(vol, true_map, pixel_size)
    out["refined_fsc05"] = fsc.resolution_at(freq, values, 0.5)
    out["refined_fsc0143"] = fsc.resolution_at(freq, values, 0.143)
    log(f"  refinement: {out['refine_seconds']:.0f} s, {out['refine_iterations']} iterations; "
        f"E_OR median {out['refined_rot_median']:.3f} rad, offsets {out['refined_shift_err']:.2f} "
        f"px, FSC0.5 vs true map {out['refined_fsc05']:.2f} A")
    return out


def fmt(v, spec=".3f"):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "nan"
    return format(v, spec)


def rad_deg(v):
    return f"{v:.3f} ({np.degrees(v):.1f}°)"


def build_table(results, paper):
    """Markdown table: one row per metric; per setting our column and (if the paper has
    that setting) the paper's."""
    cols = []
    for s2, res in results:
        name = "noiseless" if not s2 else f"σ²={s2:g}"
        cols.append((f"{name}: ours", res, None))
        if paper and s2 in PAPER:
            cols.append((f"{name}: paper", None, PAPER[s2]))

    def row(label, ours, theirs=lambda p: None):
        cells = [ours(r) if r is not None else fmt(theirs(p)) for _, r, p in cols]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| metric | " + " | ".join(c[0] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [
        row("particles train / val / test", lambda r: r["split"]),
        row("E_OR median, O(4) aligned (rad)", lambda r: rad_deg(r["o4_median"]),
            lambda p: p["median"]),
        row("E_OR mean, O(4) aligned (rad)", lambda r: rad_deg(r["o4_mean"])),
        row("E_OR median, rotation+handedness (rad)", lambda r: rad_deg(r["rot_median"])),
        row("E_OR mean, rotation+handedness (rad)", lambda r: rad_deg(r["rot_mean"])),
        row("E_OR median of random orientations (rad)", lambda r: fmt(r["random_median"])),
        row("L_DE validation, best (rad²)", lambda r: fmt(r["l_de_val"], ".4f")),
        row("training epochs", lambda r: r["epochs"]),
        row("L_OR final (rad²)", lambda r: fmt(r["l_or"], ".4f")),
        row("FSC0.5 vs true map (Å)", lambda r: fmt(r["fsc05"], ".1f"), lambda p: p["fsc05"]),
        row("FSC0.143 vs true map (Å)", lambda r: fmt(r["fsc0143"], ".1f")),
        row("FSC0.5, true orientations (+ true offsets with CTF/shifts) (Å)",
            lambda r: fmt(r.get("fsc05_true_orient"), ".1f")),
    ]
    if any("refined_rot_median" in r for _, r in results):
        lines += [
            row("offsets before refinement: median error (px), after frame translation",
                lambda r: fmt(r.get("shift_err_start"), ".2f")),
            row("AFTER REFINEMENT: E_OR median, rotation+handedness (rad)",
                lambda r: rad_deg(r["refined_rot_median"])),
            row("after refinement: E_OR mean, rotation+handedness (rad)",
                lambda r: rad_deg(r["refined_rot_mean"])),
            row("after refinement: offsets, median error (px), after frame translation",
                lambda r: fmt(r["refined_shift_err"], ".2f")),
            row("after refinement: FSC0.5 / FSC0.143 vs true map (Å)",
                lambda r: f"{r['refined_fsc05']:.1f} / {r['refined_fsc0143']:.1f}"),
            row("after refinement: half-map FSC0.5 / FSC0.143 (Å, gold standard)",
                lambda r: f"{r['refine_half_fsc05']:.1f} / {r['refine_half_fsc0143']:.1f}"),
            row("refinement: iterations, wall / CPU time (s)",
                lambda r: f"{r['refine_iterations']}, {r['refine_seconds']:.0f} / "
                          f"{r['refine_cpu']:.0f}"),
        ]
    lines += [
        row("time simulate (s)", lambda r: fmt(r["times"]["simulate"], ".1f")),
        row("time train (s)", lambda r: fmt(r["times"]["train"], ".1f")),
        row("time embed (s)", lambda r: fmt(r["times"]["embed"], ".1f")),
        row("time recover (s)", lambda r: fmt(r["times"]["recover"], ".1f")),
        row("time align (s)", lambda r: fmt(r["times"]["align"], ".1f")),
        row("time reconstruct + FSC (s)", lambda r: fmt(r["times"]["reconstruct"], ".1f")),
        row("time total (s)", lambda r: fmt(r["times"]["total"], ".1f")),
        row("peak RSS after training / recovery / all (MB)",
            lambda r: (f"{r['rss_train']:.0f} / {r['rss_recover']:.0f} / "
                       f"{r['rss_reconstruct']:.0f}")),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-particles", type=int, default=5000)
    ap.add_argument("--size", type=int, default=116, help="image box (px); the map is "
                    "zero-padded to it (3.667 A/px) or downsampled if smaller")
    ap.add_argument("--net-size", type=int, default=64,
                    help="the network sees images Fourier-downsampled to this size")
    ap.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 16.0],
                    help="noise variances relative to unit-variance clean images (0: noiseless)")
    ap.add_argument("--ctf-shifts", action="store_true",
                    help="also apply random CTFs and shifts (corrected in reconstruction)")
    ap.add_argument("--max-shift", type=float, default=4.0, help="px, with --ctf-shifts")
    ap.add_argument("--defocus-error", type=float, default=100.0,
                    help="with --ctf-shifts: standard deviation (A) of the defocus error of "
                         "the test particles' CTF estimates (default 100 A; 0: exact)")
    ap.add_argument("--start-shifts", choices=("zero", "com"), default="zero",
                    help="with --ctf-shifts: the starting offsets, none (as picked) or the "
                         "reference-free centre of mass; never the true ones")
    ap.add_argument("--refine-iterations", type=int, default=10,
                    help="with --ctf-shifts: at most this many local refinement iterations "
                         "(0: no refinement)")
    ap.add_argument("--refine-shift-range", type=float, default=9.0,
                    help="px, offsets searched in the first refinement iteration (the "
                         "particles' centres of mass lie up to --max-shift plus the map's "
                         "off-centre mass from the box centre)")
    ap.add_argument("--train-noise", choices=("fresh", "fixed"), default="fresh",
                    help="noisy settings: train on the training particles' clean projections "
                         "with fresh noise of the same level in every batch (default), or "
                         "on their fixed noisy images (the paper's protocol)")
    ap.add_argument("--head", choices=network.DISTANCE_HEADS, default="rotation",
                    help="feature cosine -> distance (see network.cosine_to_distance); "
                         "'angle' is the paper's d_f")
    ap.add_argument("--architecture", default="resnet", choices=network.ARCHITECTURES)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--n-features", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-minutes", type=float, default=20.0,
                    help="training time budget per setting (0: none)")
    ap.add_argument("--recovery-steps", type=int, default=1000)
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the reconstruction from the true orientations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the table to this markdown file")
    ap.add_argument("--save-model", metavar="DIR",
                    help="save each setting's trained model here (for peers.py --model)")
    ap.add_argument("--load-model", metavar="DIR",
                    help="use each setting's model saved by --save-model in DIR instead of "
                         "training (same simulation: same --n-particles, --size, --seed)")
    ap.add_argument("--map", default=MAP_PATH)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run (~200 particles, 32 px, 2 short epochs, tiny net)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_particles, args.size, args.net_size = 200, 32, 32
        args.epochs, args.steps_per_epoch, args.batch_size = 2, 3, 32
        args.width, args.n_features = 4, 16
        args.recovery_steps, args.train_minutes = 100, 0
        args.max_shift = min(args.max_shift, 1.0)
        args.refine_iterations, args.refine_shift_range = min(args.refine_iterations, 2), 2.0
    return args


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("paper.py", argv, tensorflow=True)
    results, pixel_size = run_noise_settings(args, run_setting)

    header = setting_header("paper benchmark", args, pixel_size)
    table = build_table(results, paper=args.size == 116 and not args.ctf_shifts)
    notes = [
        "",
        "- paper: Banjac et al. 2021, 5j0n, 116 px, median E_OR and FSC0.5 "
        "(paper columns shown only at 116 px without CTF/shifts)",
        f"- FSC: test particles only, reconstruct_fourier with the rotation+handedness-aligned "
        f"orientations, soft mask radius {results[0][1]['mask_radius']:.1f} px, best handedness",
        *([f"- CTF + shifts: no true offset is used by the product. Offsets start "
           f"{'at zero' if args.start_shifts == 'zero' else 'at the reference-free centre of mass'}"
           f" and are refined (core.refinement.refine_particles, the refine protocol's call: "
           f"gold-standard half sets, <= {args.refine_iterations} iterations, first offset "
           f"search +-{args.refine_shift_range:g} px). Errors: orientations after rotation + "
           f"handedness alignment, offsets and the refined map after the 3-D translation of the "
           f"frame (a map's origin is arbitrary). The test particles' CTFs (refinement and "
           f"every reconstruction, the true-orientation one included) are estimates: the "
           f"simulation's defocus with a per-particle error N(0, "
           f"{args.defocus_error:g} A), as CTF estimation gives."] if args.ctf_shifts else []),
        f"- settings: architecture {args.architecture}, width {args.width}, features "
        f"{args.n_features}, batch {args.batch_size}, epochs <= {args.epochs}, steps/epoch "
        f"{args.steps_per_epoch or 'auto'}, train budget {args.train_minutes:g} min/setting, "
        f"training noise {args.train_noise}, head {args.head}, "
        f"recovery steps {args.recovery_steps}, seed {args.seed}",
        *run.footer(),
    ]
    text = "\n".join([header, "", table] + notes) + "\n"
    write_report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
