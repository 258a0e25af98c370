"""Benchmark of orientlearn.core.distance on the CPU (prints tables).

1. Training throughput (images/s, pairs/s) of the default architecture at 48 and 64 px.
2. 5j0n downsampled to 48 px, noiseless projections: train ~TRAIN_SECONDS, then on
   held-out projections: MAE of d_hat per true-distance bin and the mirror-false-
   neighbour rate (of pairs with d_hat < 0.4, the fraction with true d > 1 rad).

Usage: python benchmarks/bench_distance.py [--train-seconds 300] [--no-mirror-aug]
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from scipy import ndimage

from orientlearn.core import geometry
from orientlearn.core import distance as dist

MAP = os.path.join(os.path.dirname(__file__), "..", "orientlearn", "data", "5j0n.mrc")
if not os.path.exists(MAP):
    MAP = "/work/shared/data/5j0n.mrc"


def project(vol, quats):
    """Real-space projections ``p(x, y) = sum_z V(R^T (x, y, z))`` (geometry.py)."""
    n = vol.shape[0]
    c = n // 2
    y, x = np.mgrid[:n, :n] - c
    pts = np.stack(np.broadcast_arrays(x[None], y[None], (np.arange(n) - c)[:, None, None]), -1)
    out = np.empty((len(quats), n, n), np.float32)
    for i, R in enumerate(geometry.quaternion_to_matrix(quats)):
        src = pts @ R
        out[i] = ndimage.map_coordinates(vol, [src[..., 2] + c, src[..., 1] + c, src[..., 0] + c],
                                         order=1, mode="constant").sum(0)
    return out


def load_volume(size=48):
    import mrcfile
    with mrcfile.open(MAP, permissive=True) as m:
        v = np.asarray(m.data, np.float64)
    n = max(v.shape)
    cube = np.zeros((n, n, n))
    o = [(n - s) // 2 for s in v.shape]
    cube[o[0]:o[0] + v.shape[0], o[1]:o[1] + v.shape[1], o[2]:o[2] + v.shape[2]] = v
    small = ndimage.zoom(cube, size / n, order=1)
    return np.clip(small, 0, None)


def throughput(size, steps=12):
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((600, size, size)).astype(np.float32)
    q = geometry.uniform_quaternions(600, seed=0)
    _, h = dist.train_distance_model(imgs, q, epochs=2, steps_per_epoch=steps, batch_size=64,
                                     validation_fraction=0.1, patience=None, seed=0)
    return h["images_per_s"][-1], h["pairs_per_s"][-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-seconds", type=float, default=300)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--no-mirror-aug", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args()

    if not a.skip_throughput:
        print("| size | images/s | pairs/s |  (default 'resnet', width 24, B = 64, 2 CPU cores)")
        for size in (48, 64):
            ips, pps = throughput(size)
            print(f"| {size} | {ips:.0f} | {pps:.0f} |", flush=True)

    t = time.time()
    vol = load_volume(48)
    q_train = geometry.uniform_quaternions(a.n_train, seed=10)
    q_test = geometry.uniform_quaternions(a.n_test, seed=11)
    x_train, x_test = project(vol, q_train), project(vol, q_test)
    print(f"projected {a.n_train + a.n_test} images of 48 px in {time.time() - t:.0f}s", flush=True)

    aug = dict(rotations=not a.no_mirror_aug, mirror=not a.no_mirror_aug,
               copy_fraction=0.0 if a.no_mirror_aug else 0.5)
    ips = throughput(48, steps=6)[0]
    total_steps = int(a.train_seconds * ips / 64)
    epochs = 10
    t = time.time()
    model, h = dist.train_distance_model(
        x_train, q_train, epochs=epochs, steps_per_epoch=max(1, total_steps // epochs),
        batch_size=64, patience=None, augmentation=aug, seed=0,
        progress=lambda e, n, logs: print(f"epoch {e}/{n}: {logs}", flush=True))
    print(f"trained {time.time() - t:.0f}s, best val {h['best_val_loss']:.4f} "
          f"(constant {h['val_constant_baseline']:.4f})")

    f = dist.embed(model, x_test)
    iu = np.triu_indices(a.n_test, 1)
    d_hat = dist.distance_matrix(f)[iu]
    d_true = geometry.distance(q_test[:, None], q_test[None])[iu]
    print("\n| true d bin (rad) | pairs | MAE | mean(d_hat - d) |")
    edges = np.linspace(0, np.pi, 9)
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (d_true >= lo) & (d_true < hi)
        if s.any():
            e = d_hat[s] - d_true[s]
            print(f"| {lo:.2f}-{hi:.2f} | {s.sum()} | {np.abs(e).mean():.3f} | {e.mean():+.3f} |")
    print("\n| d_hat range | pairs | frac true d > 1 rad | 90th pct true d |")
    for lo, hi in ((0, 0.2), (0.2, 0.4), (0, 0.4)):
        s = (d_hat >= lo) & (d_hat < hi)
        if s.any():
            print(f"| {lo}-{hi} | {s.sum()} | {np.mean(d_true[s] > 1):.3f} | "
                  f"{np.percentile(d_true[s], 90):.2f} |")
    mirror = dist.estimate_distances(model, x_test[:200], dist.mirror_images(x_test[:200]))
    print(f"\nd_hat(image, its mirror) (true pi): median {np.median(mirror):.2f}, "
          f"5th pct {np.percentile(mirror, 5):.2f}")


if __name__ == "__main__":
    main()
