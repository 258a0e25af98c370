"""The ``orientlearn`` command line: one module per command, each with
``add_args(parser)`` and ``main(args)`` (as cryoDRGN's commands).

    orientlearn simulate     projections of a map -> MRC stack + RELION STAR (ground truth)
    orientlearn train        a distance network from oriented particles (STAR)
    orientlearn embed        features of particles under the detector transforms
    orientlearn recover      orientations of particles from a trained network -> STAR
    orientlearn reconstruct  half maps, full map and FSC from oriented particles
    orientlearn compare      orientation errors against reference orientations (and maps)

Core only: no Scipion is imported or needed. Every command reads and writes MRC stacks
and RELION STAR files, reports progress on the terminal (stderr) and has the same
defaults as the matching Scipion protocol.
"""
import argparse
import importlib
import logging
import sys

COMMANDS = ("simulate", "train", "embed", "recover", "reconstruct", "compare")

log = logging.getLogger("orientlearn")


def _module(name):
    return importlib.import_module(f"{__name__}.{name}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="orientlearn",
        description="orientlearn: ab initio particle orientations by learning "
                    "(the core's command line; no Scipion needed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'orientlearn COMMAND --help' for the options of a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _module(name)
        doc = module.__doc__.strip()
        p = sub.add_parser(name, help=doc.split("\n")[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(func=module.main)
    return parser


def main(argv=None):
    """Entry point of the ``orientlearn`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
