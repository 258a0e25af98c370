"""Train the generalist distance model on the mdanalysistests ``data/dssp/`` chains.

Trains ONLY on ``MDAnalysisTests/data/dssp/*.pdb.gz`` (single protein chains); the test
proteins of ``benchmarks/unseen.py`` (adk_open, 1osm, 1a28, 19hc, 4E43, 1hvr, 5j0n) are
refused as training input. Writes ``MODEL.keras``, its metadata ``MODEL.json`` (the model
card's numbers) and prints a summary with the run time.

    PYTHONPATH=. python benchmarks/generalist.py --out /tmp/generalist.keras \\
        --box 32 --particles 400 --epochs 20

With ``--map PATH --diameter A`` it trains a single-protein model on a density map in the
same normalised frame instead (e.g. the bundled 5j0n map: the baseline / ceiling rows of
``benchmarks/unseen.py``). Needs ``pip install MDAnalysisTests`` (a benchmark extra).
"""
import argparse
import glob
import os
import time

from orientlearn.benchmarking import BenchmarkRun
from orientlearn.core import atoms, generalist, volumes
from orientlearn.core.model_io import save_distance_model

TEST_PROTEINS = ("adk_open", "1osm", "1a28", "19hc", "4e43", "1hvr", "5j0n")
SKIP = ("_failing", "wrong_hydrogens")   # a duplicate chain and a hydrogen-test file


def dssp_folder():
    import MDAnalysisTests
    return os.path.join(os.path.dirname(MDAnalysisTests.__file__), "data", "dssp")


def training_files(folder=None):
    """The dssp chains (sorted), without duplicates; refuses test proteins."""
    folder = folder or dssp_folder()
    files = sorted(glob.glob(os.path.join(folder, "*.pdb.gz")))
    files = [f for f in files if not any(s in os.path.basename(f) for s in SKIP)]
    for f in files:
        if any(os.path.basename(f).lower().startswith(t) for t in TEST_PROTEINS):
            raise ValueError(f"{f} is a test protein: it must not be trained on")
    if not files:
        raise ValueError(f"no training chains in {folder}")
    return files


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="model file to write (.keras)")
    p.add_argument("--box", type=int, default=32, help="network box (px)")
    p.add_argument("--particles", type=int, default=400, help="particles per protein")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=24, help="resnet width")
    p.add_argument("--max-sigma2", type=float, default=64.0)
    p.add_argument("--clean-fraction", type=float, default=0.2)
    p.add_argument("--max-shift-fraction", type=float, default=0.1, help="of the box")
    p.add_argument("--no-centre", action="store_true", help="do not centre particles")
    p.add_argument("--residual-shift-fraction", type=float, default=0.03)
    p.add_argument("--no-ctf", action="store_true", help="train without a CTF")
    p.add_argument("--size-jitter", type=float, default=0.15)
    p.add_argument("--limit", type=int, default=None, help="use the first N chains only")
    p.add_argument("--map", default=None, help="train on this density map instead")
    p.add_argument("--diameter", type=float, default=None, help="its particle diameter (A)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: 3 chains, 40 particles, 1 epoch of 3 steps")
    args = p.parse_args(argv)
    if args.smoke:
        args.limit, args.particles, args.epochs, args.steps_per_epoch = 3, 40, 1, 3
    return args


def main(argv=None):
    args = parse_args(argv)
    run = BenchmarkRun("generalist.py", argv, tensorflow=True)
    t0 = time.perf_counter()
    config = generalist.GeneralistConfig(
        network_box=args.box, particles_per_protein=args.particles, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, width=args.width,
        max_sigma2=args.max_sigma2, clean_fraction=args.clean_fraction, seed=args.seed,
        max_shift_fraction=args.max_shift_fraction, size_jitter=args.size_jitter,
        centre=not args.no_centre, residual_shift_fraction=args.residual_shift_fraction,
        defocus_range=None if args.no_ctf else (1.0e4, 3.0e4))
    if args.map:
        if not args.diameter:
            raise SystemExit("--map needs --diameter (A)")
        vol, voxel = volumes.read_volume(args.map)
        sets = [generalist.map_particles(vol, voxel, args.diameter, config, seed=args.seed,
                                         name=os.path.basename(args.map))]
        model, meta = generalist.train_generalist(None, config, sets=sets)
        meta["kind"] = "single-protein"
    else:
        files = training_files()[:args.limit]
        structures = [atoms.read_structure(f) for f in files]
        names = [os.path.basename(f).split(".")[0] for f in files]
        model, meta = generalist.train_generalist(structures, config, names=names)
    total = time.perf_counter() - t0
    footer = run.footer()
    meta.update(provenance=footer, total_s=total)
    save_distance_model(model, args.out, meta)
    h = meta["history"]
    print(f"Trained on {len(meta['training_proteins'])} proteins "
          f"({meta['training_proteins'][0]} ... {meta['training_proteins'][-1]}), "
          f"box {args.box} px, fill {config.fill}, {args.particles} particles each, "
          f"{args.epochs} epochs; final loss {h['loss'][-1]:.4f}, best val loss "
          f"{h['best_val_loss']:.4f} (constant predictor {h['val_constant_baseline']:.4f}); "
          f"{total:.0f} s in all -> {args.out}")
    print("\n".join(footer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
