"""Reconstruct half maps and the full map from oriented particles, with the FSC.

Direct Fourier inversion in one streamed pass: each particle goes to one of two random
halves (seeded), its shift undone and its CTF corrected (Wiener-like) when the STAR file
has one; the full map is made from the sum of the halves. Writes OUT (full map),
OUT_half1/OUT_half2 (.mrc) and OUT_fsc.txt (frequency 1/A, half-map FSC[, FSC vs the
reference]).
"""
import logging
import os

log = logging.getLogger("orientlearn")


def add_args(parser):
    from ..pipeline import RECONSTRUCTION_DEFAULTS as D
    from .common import add_particles, add_run_options
    add_particles(parser, "particles with orientations: a RELION STAR file")
    parser.add_argument("-o", "--out", required=True, help="output map (.mrc)")
    parser.add_argument("--symmetry", default=D["symmetry"],
                        help=f"point group (default {D['symmetry']})")
    parser.add_argument("--no-ctf", action="store_true", help="do not correct the CTF")
    parser.add_argument("--wiener", type=float, default=D["wiener_constant"],
                        help=f"Wiener constant (default {D['wiener_constant']})")
    parser.add_argument("--mask-radius", type=float, default=None,
                        help="soft spherical mask radius in px (default: none)")
    parser.add_argument("--reference", default=None,
                        help="a map in the particles' frame: FSC against it (both hands)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="particles read per batch (default 256)")
    add_run_options(parser, seed="seed of the half split")


def _write_map(path, volume, pixel_size):
    import mrcfile
    import numpy as np
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = pixel_size


def main(args):
    import numpy as np

    from .. import fsc, volumes
    from ..pipeline import reconstruct_halves
    from .common import check_output, progress, read_particles, set_threads
    set_threads(args)
    root = os.path.splitext(args.out)[0]
    paths = [check_output(p, args.overwrite) for p in
             (args.out, root + "_half1.mrc", root + "_half2.mrc", root + "_fsc.txt")]
    source = read_particles(args)
    maps = reconstruct_halves(source, symmetry=args.symmetry, ctf=not args.no_ctf,
                              wiener_constant=args.wiener, mask_radius=args.mask_radius,
                              seed=args.seed, batch_size=args.batch_size,
                              progress=progress("reconstruct"))
    columns, header = [maps.frequencies, maps.fsc], "frequency_1/A fsc_half"
    log.info("half-map FSC: %.2f A at 0.143, %.2f A at 0.5", maps.resolution(0.143),
             maps.resolution(0.5))
    if args.reference:
        ref, voxel = volumes.read_volume(args.reference)
        new = int(round(ref.shape[0] * voxel / source.pixel_size))
        if new != ref.shape[0]:
            ref = volumes.downsample_volume(ref, new)
        ref = volumes.crop_or_pad_volume(ref, source.image_size)
        _, fsc_ref, flipped = fsc.fsc_with_handedness(maps.full, ref, source.pixel_size)
        columns.append(fsc_ref)
        header += " fsc_reference"
        log.info("FSC vs %s%s: %.2f A at 0.143, %.2f A at 0.5", args.reference,
                 " (mirrored map)" if flipped else "",
                 fsc.resolution_at(maps.frequencies, fsc_ref, 0.143),
                 fsc.resolution_at(maps.frequencies, fsc_ref, 0.5))
    for path, vol in zip(paths, (maps.full, maps.half1, maps.half2)):
        _write_map(path, vol, source.pixel_size)
    np.savetxt(paths[3], np.stack(columns, axis=1), header=header, fmt="%.6g")
    log.info("wrote %s", ", ".join(paths))
