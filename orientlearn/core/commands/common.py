"""What the commands share: progress on the terminal, output checks, sources."""
import logging
import os

log = logging.getLogger("orientlearn")


def progress(label, unit="particles", interval=5.0):
    """A ``progress(done, total)`` callable logging rate and ETA."""
    from ..progress import ProgressReporter
    return ProgressReporter(log=log.info, label=label, unit=unit, interval=interval)


def check_output(path, overwrite=False):
    """Refuse to replace an existing file unless ``overwrite``; create its folder."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists: choose another name or pass --overwrite.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return path


def add_overwrite(parser):
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist")


def add_run_options(parser, seed="random seed"):
    """``--seed`` (``seed``: what it seeds; None: no seed), ``--threads``, ``--overwrite``."""
    if seed:
        parser.add_argument("--seed", type=int, default=0, help=f"{seed} (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the usable cores, at most OMP_NUM_THREADS)")
    add_overwrite(parser)


def add_model_io(parser, out_help, no_transforms_help):
    """The particles, ``-m/--model``, ``-o/--out`` and ``--no-transforms`` of the commands
    that run a trained network over particles."""
    add_particles(parser)
    parser.add_argument("-m", "--model", required=True, help="trained model (.keras)")
    parser.add_argument("-o", "--out", required=True, help=out_help)
    parser.add_argument("--no-transforms", action="store_true", help=no_transforms_help)


def add_particles(parser, help_text="particles: a RELION STAR file (.star) or an MRC stack"):
    parser.add_argument("particles", help=help_text)
    parser.add_argument("--datadir", default=None,
                        help="folder the STAR file's image names are relative to (default: "
                             "the STAR file's folder, then the working directory)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="pixel size in A (default: from the STAR file or stack header)")


def read_particles(args):
    """A particle source from ``args.particles`` (STAR or MRC stack)."""
    from ..source import MrcSource, read_star
    if args.particles.endswith(".star"):
        source = read_star(args.particles, datadir=args.datadir, pixel_size=args.pixel_size)
    else:
        source = MrcSource(args.particles, pixel_size=args.pixel_size)
    log.info("read %s", source)
    return source


def set_threads(args):
    """Keep every library to ``--threads`` threads (``resources.limit_threads``)."""
    threads = getattr(args, "threads", None)
    if threads:
        from ..resources import limit_threads
        limit_threads(int(threads))
