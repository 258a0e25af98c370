"""Embed particles with a trained network under the detector transforms.

Writes features (K, N, F) float32 (.npy): K = 8 image-side transforms (rotations by
k x 90 degrees, with and without the mirror; 1 with --no-transforms), N particles, F
features. Particles are read in batches and resampled to the model's grid.
"""
import logging

log = logging.getLogger("orientlearn")


def add_args(parser):
    from .common import add_model_io, add_run_options
    add_model_io(parser, "output features (.npy)", "identity only (the paper's setting)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="particles per batch (default 128)")
    add_run_options(parser, seed=None)


def main(args):
    import numpy as np

    from ..model import DistanceModel
    from ..pipeline import detector_transforms, embed_particles
    from .common import check_output, progress, read_particles, set_threads
    check_output(args.out, args.overwrite)
    set_threads(args)
    source = read_particles(args)
    model = DistanceModel.load(args.model)
    log.info("model %s", model)
    feats = embed_particles(source, model, detector_transforms(not args.no_transforms),
                            batch_size=args.batch_size, progress=progress("embed"))
    np.save(args.out, feats)
    log.info("wrote %s %s", args.out, feats.shape)
