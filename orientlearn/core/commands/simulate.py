"""Simulate particles of a density map: an MRC stack and a RELION STAR file.

Orientations uniform on SO(3) (or in the asymmetric unit of --symmetry), optional shifts
and CTF, white noise of variance --sigma2 relative to unit-variance clean images (the
paper's imaging model, eq. 1). The STAR file holds the true orientations, shifts and CTF.
Written in chunks: memory stays bounded whatever --n.
"""
import logging
import os

log = logging.getLogger("orientlearn")


def add_args(parser):
    from .common import add_run_options
    parser.add_argument("volume", help="density map (MRC), padded to an even cube")
    parser.add_argument("-o", "--out", required=True,
                        help="output STAR file; the stack is written beside it (.mrcs)")
    parser.add_argument("-n", "--n", type=int, default=5000, help="particles (default 5000)")
    parser.add_argument("--size", type=int, default=0,
                        help="image size in px (Fourier-downsampled); 0: the map's box")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="voxel size of the map in A (default: its header)")
    parser.add_argument("--symmetry", default="C1",
                        help="draw orientations in this group's asymmetric unit (C1: all)")
    parser.add_argument("--max-shift", type=float, default=0.0,
                        help="shifts up to this many px per axis (triangular); default 0")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--sigma2", type=float, default=16.0,
                       help="noise variance relative to the clean images' (default 16, "
                            "the paper's; 0: noiseless)")
    noise.add_argument("--snr-db", type=float, default=None, help="noise as an SNR in dB")
    parser.add_argument("--ctf", action="store_true", help="apply random CTFs")
    parser.add_argument("--defocus", type=float, nargs=2, default=(10000.0, 30000.0),
                        metavar=("MIN", "MAX"), help="defocus range in A (default 1e4 3e4)")
    parser.add_argument("--astigmatism", type=float, default=500.0,
                        help="maximum defocus difference in A (default 500)")
    parser.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    parser.add_argument("--cs", type=float, default=2.7, help="mm (default 2.7)")
    parser.add_argument("--amplitude-contrast", type=float, default=0.1,
                        help="default 0.1")
    parser.add_argument("--oversampling", type=int, default=2,
                        help="projector zero-padding factor (default 2)")
    parser.add_argument("--chunk-size", type=int, default=2048,
                        help="particles simulated at a time (default 2048)")
    add_run_options(parser)


def main(args):
    from .. import volumes
    from ..pipeline import simulate_to_stack
    from ..source import write_star
    from .common import check_output, progress, set_threads
    set_threads(args)
    star = check_output(args.out, args.overwrite)
    stack = check_output(os.path.splitext(star)[0] + ".mrcs", args.overwrite)
    volume, voxel = volumes.read_volume(args.volume)
    voxel = args.voxel_size or voxel
    if not voxel or voxel <= 0:
        raise ValueError(f"{args.volume} has no voxel size: give --voxel-size.")
    ctf = None
    if args.ctf:
        ctf = dict(defocus_range=tuple(args.defocus), astigmatism=(0.0, args.astigmatism),
                   voltage=args.voltage, cs=args.cs, amplitude_contrast=args.amplitude_contrast)
    noise = (dict(snr_db=args.snr_db) if args.snr_db is not None
             else dict(sigma2=args.sigma2 if args.sigma2 > 0 else None))
    log.info("simulating %d particles of %s (%d^3 voxels at %.3f A)", args.n, args.volume,
             volume.shape[0], voxel)
    source = simulate_to_stack(volume, args.n, stack, image_size=args.size or None,
                               voxel_size=voxel, symmetry=args.symmetry,
                               max_shift=args.max_shift, ctf=ctf, seed=args.seed,
                               oversampling=args.oversampling, chunk_size=args.chunk_size,
                               progress=progress("simulate"), **noise)
    write_star(star, source)
    log.info("wrote %s and %s (%d px at %.4g A/px)", star, stack, source.image_size,
             source.pixel_size)
