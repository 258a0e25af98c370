"""Train a distance network on oriented particles (STAR files with orientations).

The network learns the distance between two particles' orientations from their images
(Siamese network, eq. 3 of Banjac et al.); all pairs of each batch are supervised. The
images are read whole and Fourier-resampled to --size. Writes a .keras model with its
metadata (.json beside it: grid, head, training summary) and the training history.
"""
import json
import logging
import os

log = logging.getLogger("orientlearn")


def add_args(parser):
    from ..network import ARCHITECTURES, DISTANCE_HEADS, PAIR_LOSSES
    from ..pipeline import TRAINING_DEFAULTS as D
    from ..pipeline import TRAINING_IMAGE_SIZE
    from .common import add_run_options
    parser.add_argument("particles", nargs="+",
                        help="training sets: STAR files (or MRC stacks with --orientations)")
    parser.add_argument("-o", "--out", required=True, help="output model (.keras)")
    parser.add_argument("--datadir", default=None,
                        help="folder the STAR files' image names are relative to")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="pixel size in A (default: from the STAR file)")
    parser.add_argument("--size", type=int, default=TRAINING_IMAGE_SIZE,
                        help=f"box of the network's images in px (default {TRAINING_IMAGE_SIZE})")
    parser.add_argument("--symmetry", default="C1",
                        help="true distances are the minimum over this point group")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=D["architecture"],
                        help=f"default {D['architecture']}")
    parser.add_argument("--head", choices=DISTANCE_HEADS, default=D["head"],
                        help=f"feature cosine -> distance (default {D['head']})")
    parser.add_argument("--features", type=int, default=D["n_features"],
                        help=f"embedding length (default {D['n_features']})")
    parser.add_argument("--epochs", type=int, default=D["epochs"],
                        help=f"default {D['epochs']}")
    parser.add_argument("--batch-size", type=int, default=D["batch_size"],
                        help=f"default {D['batch_size']}")
    parser.add_argument("--lr", type=float, default=D["learning_rate"],
                        help=f"Adam learning rate (default {D['learning_rate']})")
    parser.add_argument("--loss", choices=PAIR_LOSSES, default=D["loss"],
                        help=f"default {D['loss']}")
    parser.add_argument("--validation-fraction", type=float, default=D["validation_fraction"],
                        help=f"particles held out (default {D['validation_fraction']})")
    parser.add_argument("--patience", type=int, default=D["patience"],
                        help="epochs without improvement before stopping "
                             f"(default {D['patience']})")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="batches per epoch; 0: one pass over the training particles")
    parser.add_argument("--no-transforms", action="store_true",
                        help="no mirrored / 90-degree-rotated copies in the batches")
    parser.add_argument("--noise", type=float, nargs=2, default=(0.0, 0.0),
                        metavar=("MIN", "MAX"), help="extra noise variance range (default 0 0)")
    parser.add_argument("--max-shift", type=int, default=0,
                        help="random integer shifts up to this many px (default 0)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="save after each epoch here; resumes from it if present")
    add_run_options(parser)


def main(args):
    import numpy as np

    from ..pipeline import train_model
    from ..source import read_star
    from .common import check_output, set_threads
    if not args.out.endswith(".keras"):
        raise ValueError(f"The model file name must end with .keras: {args.out}")
    check_output(args.out, args.overwrite)
    set_threads(args)
    sources = [read_star(p, datadir=args.datadir, pixel_size=args.pixel_size)
               for p in args.particles]
    for p, s in zip(args.particles, sources):
        log.info("training set %s: %s", p, s)

    def on_epoch(epoch, n_epochs, logs):
        log.info("epoch %d/%d: %s", epoch, n_epochs, logs)

    augment = not args.no_transforms
    model, history = train_model(
        sources, image_size=args.size, symmetry=args.symmetry, seed=args.seed,
        progress=on_epoch, checkpoint_dir=args.checkpoint_dir,
        augmentation=dict(rotations=augment, mirror=augment,
                          copy_fraction=0.5 if augment else 0.0,
                          noise_variance=tuple(args.noise), max_shift=args.max_shift),
        architecture=args.architecture, head=args.head, n_features=args.features,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        loss=args.loss, validation_fraction=args.validation_fraction,
        patience=args.patience, steps_per_epoch=args.steps_per_epoch or None)
    model.metadata["training_sets"] = [os.path.abspath(p) for p in args.particles]
    model.metadata["best_val_loss"] = float(history["best_val_loss"])
    model.save(args.out)
    hist_path = os.path.splitext(args.out)[0] + "_history.json"
    with open(hist_path, "w") as fh:
        json.dump(history, fh, indent=1, default=lambda o: float(np.asarray(o)))
    log.info("wrote %s (best validation loss %.4g at epoch %d; constant predictor %.4g) "
             "and %s", args.out, history["best_val_loss"], history["best_epoch"] + 1,
             history["val_constant_baseline"], hist_path)
