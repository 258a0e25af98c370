"""Compare orientations with reference orientations (e.g. a simulation's truth).

Particles are matched by position in the two STAR files (same particles in the same
order). Reports median and mean errors after the best global rotation + handedness
(what reconstruction sees) and after the best O(4) map, with the error of random
orientations for scale. Optionally writes the aligned orientations (-o) and the FSC of
a map against a reference map (--map, --reference-map).
"""
import logging

log = logging.getLogger("orientlearn")


def add_args(parser):
    from .common import add_run_options
    parser.add_argument("particles", help="STAR file with the orientations to evaluate")
    parser.add_argument("reference", help="STAR file with the reference orientations")
    parser.add_argument("--symmetry", default="C1", help="point group (default C1)")
    parser.add_argument("-o", "--out", default=None,
                        help="write the rotation+handedness-aligned orientations (STAR)")
    parser.add_argument("--map", default=None, help="a map to compare with --reference-map")
    parser.add_argument("--reference-map", default=None, help="the reference map")
    parser.add_argument("--datadir", default=None,
                        help="folder the STAR files' image names are relative to")
    add_run_options(parser, seed=None)


def main(args):
    import numpy as np

    from .. import fsc, volumes
    from ..alignment import compare_orientations
    from ..source import read_star, write_star
    from .common import check_output, set_threads
    set_threads(args)
    if args.out:
        check_output(args.out, args.overwrite)
    if (args.map is None) != (args.reference_map is None):
        raise ValueError("Give both --map and --reference-map, or neither.")
    est = read_star(args.particles, datadir=args.datadir)
    ref = read_star(args.reference, datadir=args.datadir)
    if est.quaternions is None or ref.quaternions is None:
        raise ValueError("Both STAR files must carry orientations (rlnAngleRot/Tilt/Psi).")
    if len(est) != len(ref):
        raise ValueError(f"{args.particles} has {len(est)} particles, {args.reference} "
                         f"{len(ref)}: they must list the same particles in the same order.")
    res = compare_orientations(ref.quaternions, est.quaternions, symmetry=args.symmetry)
    print(f"{len(est)} particles, symmetry {args.symmetry}")
    print(f"rotation + handedness: median {res['rot_median']:.4f} rad "
          f"({np.degrees(res['rot_median']):.2f} deg), mean {res['rot_mean']:.4f} rad"
          + (" (mirrored)" if res["rot_flipped"] else ""))
    print(f"O(4):                  median {res['o4_median']:.4f} rad, mean "
          f"{res['o4_mean']:.4f} rad")
    print(f"random orientations:   median {res['random_median']:.4f} rad")
    if args.out:
        write_star(args.out, est.with_records(quaternions=res["rot_aligned"]))
        log.info("wrote %s", args.out)
    if args.map:
        vol, px = volumes.read_volume(args.map)
        refmap, px_ref = volumes.read_volume(args.reference_map)
        new = int(round(refmap.shape[0] * px_ref / px))
        if new != refmap.shape[0]:
            refmap = volumes.downsample_volume(refmap, new)
        refmap = volumes.crop_or_pad_volume(refmap, vol.shape[0])
        freq, values, flipped = fsc.fsc_with_handedness(vol, refmap, px)
        print(f"map FSC vs reference{' (mirrored map)' if flipped else ''}: "
              f"{fsc.resolution_at(freq, values, 0.5):.2f} A at 0.5, "
              f"{fsc.resolution_at(freq, values, 0.143):.2f} A at 0.143")
