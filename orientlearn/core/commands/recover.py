"""Recover the orientation of every particle from a trained distance network.

Embeds the particles under the 8 detector transforms, links each to its nearest
neighbours in feature space plus random pairs, and finds the orientations whose
distances match the estimated ones (eq. 4 of Banjac et al.), from a spectral start. No
ground truth: the result is defined up to a global rotation and the handedness. Writes a
STAR file (input records with the new orientations; input shifts and CTF kept) and an
.npz beside it with the quaternions, per-particle residual (radians: lower is more
confident) and the loss history.
"""
import logging
import os

log = logging.getLogger("orientlearn")


def add_args(parser):
    from ..pipeline import RECOVERY_DEFAULTS as D
    from ..recovery import RECOVERY_LOSSES
    from .common import add_model_io, add_run_options
    add_model_io(parser, "output STAR file",
                 "identity edges only (the paper's setting, up to O(4))")
    parser.add_argument("--neighbors", type=int, default=D["n_neighbors"],
                        help=f"neighbours per particle (default {D['n_neighbors']})")
    parser.add_argument("--random", type=int, default=D["n_random"],
                        help=f"random pairs per particle (default {D['n_random']})")
    parser.add_argument("--loss", choices=RECOVERY_LOSSES, default=D["loss"],
                        help=f"default {D['loss']}")
    parser.add_argument("--loss-scale", type=float, default=D["loss_scale"],
                        help=f"radians (default {D['loss_scale']})")
    parser.add_argument("--steps", type=int, default=D["n_steps"],
                        help=f"maximum optimisation steps (default {D['n_steps']})")
    parser.add_argument("--lr", type=float, default=D["learning_rate"],
                        help=f"learning rate (default {D['learning_rate']})")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="particles embedded per batch (default 128)")
    parser.add_argument("--features", default=None,
                        help="also save the features (K, N, F) to this .npy file")
    add_run_options(parser)


def main(args):
    import numpy as np

    from ..model import DistanceModel
    from ..pipeline import recover_particles
    from ..source import write_star
    from .common import check_output, progress, read_particles, set_threads
    check_output(args.out, args.overwrite)
    arrays = check_output(os.path.splitext(args.out)[0] + ".npz", args.overwrite)
    set_threads(args)
    source = read_particles(args)
    model = DistanceModel.load(args.model)
    msg = model.check_particles(source.image_size, source.pixel_size)
    if msg:
        raise ValueError(msg)
    log.info("model %s", model)
    result = recover_particles(source, model, use_transforms=not args.no_transforms,
                               seed=args.seed, batch_size=args.batch_size,
                               embed_progress=progress("embed"),
                               progress=progress("recover", "steps"),
                               n_neighbors=args.neighbors, n_random=args.random,
                               loss=args.loss, loss_scale=args.loss_scale,
                               n_steps=args.steps, learning_rate=args.lr)
    log.info("%s (%s start)", result, result.info.get("init", ""))
    if args.features:
        np.save(args.features, result.features)
    np.savez(arrays, quaternions=result.quaternions, residual=result.residual,
             loss_history=result.loss_history)
    write_star(args.out, source.with_records(quaternions=result.quaternions))
    log.info("wrote %s and %s", args.out, arrays)
