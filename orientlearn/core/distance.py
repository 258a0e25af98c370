"""Learned distance between projections, eq. (3) of the paper (§2.2, §3.3-3.4).

``d_hat(p_i, p_j) = d_f(G(p_i), G(p_j)) ~ d_q(q_i, q_j)`` where ``G`` is a fully
convolutional network (any image size, global average pooling to ``F`` features) and
``d_f`` the angle between feature vectors, in ``[0, pi]`` radians, the range of ``d_q``.

Training embeds a batch of ``B`` images once and supervises all ``B (B - 1) / 2`` pairs
in it (DESIGN.md: pair-by-pair training is ~100x slower). The pairs are weighted so the
distribution of true distances is effectively uniform on ``[0, pi]``. Each batch also
holds image-side transformed copies (rotations by multiples of pi/2, the mirror
``y -> -y``) of some of its images, with quaternions transformed accordingly
(``geometry`` conventions: ``q' = g q``), so the network has to tell an image from its
mirror (true distance pi) and from its rotations (pi/2, pi): DESIGN.md's "mirror false
neighbours".

Conventions: images ``(N, S, S)`` indexed ``img[y, x]`` with the centre at ``S // 2``;
``np.rot90`` (about that centre) by ``k`` quarter turns is the projection of
``in_plane_quaternion(-k pi / 2) q`` (``np.rot90`` turns ``+y`` onto ``-x``, clockwise
in ``(x, y)``); the mirror ``y -> -y`` is the projection of ``MIRROR_QUATERNION q``.
Both are checked against a real-space projector in ``tests/test_distance.py``.

Everything here is pure numpy / TensorFlow; no Scipion.
"""
import json
import math
import os
import time
import zipfile

import numpy as np

from . import geometry

__all__ = [
    "build_embedding_network", "feature_distance", "feature_distance_tf",
    "preprocess_images", "embed", "train_distance_model", "save_distance_model",
    "load_distance_model", "estimate_distances", "distance_matrix", "make_strategy",
    "symmetric_distance_tf", "rotate_images_90", "ctf_augmentation", "mirror_images", "transform_quaternion",
    "ARCHITECTURES", "DEFAULT_AUGMENTATION", "DISTANCE_HEADS", "cosine_to_distance",
    "angle_to_distance",
]

ARCHITECTURES = ("resnet", "paper")
#: How the cosine ``c`` of the angle between two feature vectors becomes a distance:
#: ``'rotation'``: ``arccos((3 c - 1) / 2)``; ``'angle'``: ``arccos(c)`` (the paper's d_f).
DISTANCE_HEADS = ("rotation", "angle")

#: Defaults of ``train_distance_model``'s ``augmentation`` dict (see its docstring).
DEFAULT_AUGMENTATION = dict(
    rotations=True,         # random k pi/2 in-plane rotations of every image
    mirror=True,            # random mirror y -> -y of every image
    copy_fraction=0.5,      # fraction of each batch that are transformed copies of others
    noise_variance=(0.0, 0.0),  # range of sigma^2 of added white noise (clean images: var 1)
    max_shift=0,            # random integer shifts in [-max_shift, max_shift] pixels
    ctf=None,               # hook callable(images (n,S,S), rng) -> images, before noise;
                            # e.g. ctf_augmentation(pixel_size)
)


def _tf():
    import tensorflow as tf  # imported lazily: numpy-only helpers need no TF start-up
    return tf


def _keras():
    import keras
    return keras


# --------------------------------------------------------------------------- network

def _scale_norm_class():
    """Batch normalisation by the per-channel root mean square, with no centring and no
    offset, so a zero feature map stays zero (zero-padding equals zero background, the
    basis of the exact shift invariance of the 'resnet' architecture)."""
    keras = _keras()
    if "_ScaleNorm" in globals():
        return globals()["_ScaleNorm"]

    @keras.saving.register_keras_serializable(package="orientlearn")
    class ScaleNorm(keras.layers.Layer):
        def __init__(self, momentum=0.95, epsilon=1e-3, **kwargs):
            super().__init__(**kwargs)
            self.momentum, self.epsilon = momentum, epsilon

        def build(self, input_shape):
            c = input_shape[-1]
            self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
            self.moving_ms = self.add_weight(shape=(c,), initializer="ones", trainable=False,
                                             name="moving_mean_square", aggregation="mean")

        def call(self, x, training=False):
            ops = keras.ops
            if training:
                ms = ops.mean(ops.square(x), axis=(0, 1, 2))
                self.moving_ms.assign(self.momentum * self.moving_ms
                                      + (1.0 - self.momentum) * ops.stop_gradient(ms))
            else:
                ms = self.moving_ms
            return x * (self.gamma * ops.rsqrt(ms + self.epsilon))

        def get_config(self):
            return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}

    globals()["_ScaleNorm"] = ScaleNorm
    return ScaleNorm


def build_embedding_network(architecture="resnet", n_features=64, width=None, seed=0):
    """Fully convolutional embedding ``G``: images ``(B, H, W, 1)`` (any size) -> ``(B, F)``.

    ``architecture``:

    * ``'resnet'`` (default, fast on a CPU at 48-64 px): a 5x5 stride-2 stem, then four
      stages (``width``, 2, 4, 8 x ``width`` channels, default ``width=24``) of one
      residual block (two 3x3 convolutions) each, stages 2-4 entered by a stride-2 3x3
      convolution (total stride 16). No biases and an uncentred normalisation
      (``ScaleNorm``), so zero stays zero: on a zero-background image whose object stays
      clear of the border, a shift by a multiple of 16 pixels leaves the features equal
      to numerical precision (with 'same' zero padding and global average pooling).
    * ``'paper'``: seven blocks of a 3x3 convolution (ReLU) and 2x2 max pooling with
      32, 64, 128, 256, 512, 512, 512 filters (scaled by ``width / 32``, default 32).

    Both end with global average pooling and a linear (bias-free) layer to
    ``n_features``: the features must be able to point in opposite directions, or
    angles above pi/2 could not be produced. ``seed`` fixes the initial weights.
    """
    keras = _keras()
    layers = keras.layers
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; choose from {ARCHITECTURES}.")
    rng = np.random.default_rng(seed)

    def init():
        return keras.initializers.HeNormal(seed=int(rng.integers(2 ** 31)))

    inp = keras.Input(shape=(None, None, 1), name="image")
    if architecture == "resnet":
        width = 24 if width is None else int(width)
        Norm = _scale_norm_class()

        def conv(x, ch, k=3, stride=1, zero=False):
            return layers.Conv2D(ch, k, strides=stride, padding="same", use_bias=False,
                                 kernel_initializer="zeros" if zero else init())(x)

        x = conv(inp, width, k=5, stride=2)
        x = layers.ReLU()(Norm()(x))
        for stage in range(4):
            ch = width * 2 ** stage
            if stage:
                x = layers.ReLU()(Norm()(conv(x, ch, stride=2)))
            y = layers.ReLU()(Norm()(conv(x, ch)))
            y = Norm()(conv(y, ch))
            x = layers.ReLU()(layers.Add()([x, y]))
    else:
        width = 32 if width is None else int(width)
        x = inp
        for mult in (1, 2, 4, 8, 16, 16, 16):
            x = layers.Conv2D(max(1, width * mult), 3, padding="same", activation="relu",
                              kernel_initializer=init())(x)
            x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(int(n_features), use_bias=False, name="features",
                       kernel_initializer=keras.initializers.GlorotNormal(
                           seed=int(rng.integers(2 ** 31))))(x)
    return keras.Model(inp, out, name=f"orientlearn_{architecture}")


# ------------------------------------------------------------------------- distances

def _check_head(head):
    if head not in DISTANCE_HEADS:
        raise ValueError(f"Unknown distance head {head!r}; choose from {DISTANCE_HEADS}.")


def cosine_to_distance(cos, head="angle"):
    """Distance (radians, ``[0, pi]``) from the cosine similarity of two feature vectors.

    ``'angle'`` (the paper's ``d_f``): ``arccos(c)``. Its Gram matrix is positive
    semi-definite, but ``cos d_q`` over all pairs of orientations is not (its mean over
    random pairs is -1/2, while unit vectors have a mean pairwise cosine >= -1/(n-1)),
    so large distances must plateau (paper Fig. 6). ``'rotation'``: ``arccos((3 c - 1) /
    2)``, i.e. ``c = (1 + 2 cos d) / 3 = tr(R_i^T R_j) / 3``, a positive semi-definite
    kernel of the orientations (the inner product of rotation matrices): a network can
    represent ``d_q`` exactly, with no plateau. ``c <= -1/3`` maps to ``pi``.
    """
    _check_head(head)
    c = np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)
    if head == "rotation":
        c = np.clip((3.0 * c - 1.0) / 2.0, -1.0, 1.0)
    return np.arccos(c)


def angle_to_distance(angle, head="angle"):
    """``cosine_to_distance`` of ``cos(angle)``: maps feature angles (radians) to
    distances; the identity for the ``'angle'`` head."""
    return cosine_to_distance(np.cos(np.asarray(angle, dtype=np.float64)), head)


def feature_distance(fa, fb, head="angle"):
    """Distance (radians, in ``[0, pi]``) between feature vectors ``(..., F)``
    (broadcast): ``cosine_to_distance`` of their cosine similarity."""
    fa = np.asarray(fa, dtype=np.float64)
    fb = np.asarray(fb, dtype=np.float64)
    na = np.linalg.norm(fa, axis=-1)
    nb = np.linalg.norm(fb, axis=-1)
    cos = np.sum(fa * fb, axis=-1) / np.maximum(na * nb, 1e-30)
    return cosine_to_distance(cos, head)


def _cosine_to_distance_tf(cos, head, eps=1e-6):
    """TensorFlow ``cosine_to_distance``, the ``arccos`` argument clipped to
    ``[-1 + eps, 1 - eps]`` so its gradient stays finite."""
    tf = _tf()
    if head == "rotation":
        cos = (3.0 * cos - 1.0) / 2.0
    return tf.acos(tf.clip_by_value(cos, -1.0 + eps, 1.0 - eps))


def feature_distance_tf(fa, fb, eps=1e-6, head="angle"):
    """TensorFlow ``feature_distance``, finite gradients (see ``_cosine_to_distance_tf``)."""
    _check_head(head)
    tf = _tf()
    cos = tf.reduce_sum(tf.math.l2_normalize(fa, -1) * tf.math.l2_normalize(fb, -1), -1)
    return _cosine_to_distance_tf(cos, head, eps)


def distance_matrix(features, head="angle"):
    """All-pairs distances of features ``(N, F)`` -> ``(N, N)`` float32 radians, zero
    diagonal."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)
    d = cosine_to_distance(f @ f.T, head).astype(np.float32)
    np.fill_diagonal(d, 0.0)
    return d


def _quat_multiply_tf(q1, q2):
    tf = _tf()
    w1, x1, y1, z1 = tf.unstack(q1, axis=-1)
    w2, x2, y2, z2 = tf.unstack(q2, axis=-1)
    return tf.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                     w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def symmetric_distance_tf(q1, q2, group):
    """TensorFlow ``geometry.symmetric_distance`` for all pairs: ``q1 (A, 4)``,
    ``q2 (B, 4)``, ``group (G, 4)`` -> ``(A, B)`` radians ``min_S d_q(q1_a, q2_b S)``."""
    tf = _tf()
    q2s = _quat_multiply_tf(q2[:, None, :], group[None, :, :])           # (B, G, 4)
    dots = tf.abs(tf.einsum("ad,bgd->abg", q1, q2s))
    return 2.0 * tf.acos(tf.clip_by_value(tf.reduce_max(dots, axis=-1), 0.0, 1.0))


# ---------------------------------------------------------------- images, transforms

def preprocess_images(images):
    """Per-image standardisation: ``(N, S, S)`` or ``(N, S, S, 1)`` -> float32
    ``(N, S, S, 1)`` with zero mean and unit standard deviation per image (a constant
    image becomes zero). Used identically in training and embedding."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, S, S) or (N, S, S, 1), got {np.shape(images)}")
    mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    std = x.std(axis=(1, 2), keepdims=True, dtype=np.float64)
    out = (x - mean) / np.where(std > 0, std, 1.0)
    return out.astype(np.float32)[..., None]


def rotate_images_90(images, k):
    """Rotate ``(N, S, S)`` images by ``k`` quarter turns (``np.rot90`` sense) about the
    pixel ``(S // 2, S // 2)`` (exact for even ``S`` too, a wrapped roll of one row /
    column). The result is the projection of ``transform_quaternion(q, k, False)``."""
    images = np.asarray(images)
    k = int(k) % 4
    out = np.rot90(images, k, axes=(-2, -1))
    if images.shape[-1] % 2 == 0:
        # np.rot90 rotates about (S - 1) / 2; for even S move back to S // 2.
        if k in (1, 2):
            out = np.roll(out, 1, axis=-2)
        if k in (2, 3):
            out = np.roll(out, 1, axis=-1)
    return out


def mirror_images(images):
    """Mirror ``y -> -y`` about row ``S // 2`` of ``(N, S, S)`` images: the projection
    of ``MIRROR_QUATERNION q``."""
    images = np.asarray(images)
    out = images[..., ::-1, :]
    if images.shape[-2] % 2 == 0:
        out = np.roll(out, 1, axis=-2)
    return out


def transform_quaternion(q, k, mirror):
    """Quaternions ``(..., 4)`` of the images ``rotate_images_90(p, k)``, then mirrored
    if ``mirror``: ``g q`` with ``g = [MIRROR] in_plane_quaternion(-k pi / 2)``."""
    g = geometry.in_plane_quaternion(-np.asarray(k, dtype=np.float64) * np.pi / 2)
    if np.ndim(mirror) == 0:
        if mirror:
            g = geometry.multiply(geometry.MIRROR_QUATERNION, g)
    else:
        gm = geometry.multiply(geometry.MIRROR_QUATERNION, g)
        g = np.where(np.asarray(mirror, bool)[..., None], gm, g)
    return geometry.multiply(g, q)


def ctf_augmentation(pixel_size, defocus_range=(1e4, 3e4), astigmatism=(0.0, 500.0),
                     voltage=300.0, cs=2.7, amplitude_contrast=0.1):
    """A ``ctf`` hook for ``train_distance_model``'s ``augmentation``: multiplies each
    image's spectrum by a random CTF (``imaging.ctf_2d_batch``; defocus Angstrom uniform
    on ``defocus_range``, astigmatism ``du - dv`` on ``astigmatism``, random angle), drawn
    from the batch's seeded generator. ``pixel_size`` Angstrom of the training images."""
    from . import imaging

    def hook(images, rng):
        n, size = len(images), images.shape[-1]
        mean = rng.uniform(*defocus_range, n)
        astig = rng.uniform(*astigmatism, n)
        ctfs = imaging.ctf_2d_batch(size, pixel_size, mean + astig / 2, mean - astig / 2,
                                    rng.uniform(0, np.pi, n), voltage=voltage, cs=cs,
                                    amplitude_contrast=amplitude_contrast)
        return preprocess_images(imaging.apply_ctf(images, ctfs))[..., 0]

    return hook


def _augment_batch(clean, quats, aug, rng):
    """Transform, shift, CTF and noise a batch of clean standardised images
    ``(n, S, S)``; returns ``(images (n, S, S, 1) float32, quats (n, 4))``."""
    n = len(clean)
    ks = rng.integers(0, 4, n) if aug["rotations"] else np.zeros(n, int)
    ms = rng.random(n) < 0.5 if aug["mirror"] else np.zeros(n, bool)
    out = np.empty_like(clean)
    for k in range(4):
        for m in (False, True):
            sel = (ks == k) & (ms == m)
            if sel.any():
                t = rotate_images_90(clean[sel], k)
                out[sel] = mirror_images(t) if m else t
    q = transform_quaternion(quats, ks, ms)
    s = int(aug.get("max_shift") or 0)
    if s > 0:
        shifts = rng.integers(-s, s + 1, (n, 2))
        for i in range(n):
            out[i] = np.roll(out[i], tuple(shifts[i]), axis=(0, 1))
    if aug.get("ctf") is not None:
        out = np.asarray(aug["ctf"](out, rng), dtype=np.float32)
    lo, hi = aug.get("noise_variance") or (0.0, 0.0)
    if hi > 0:
        var = rng.uniform(lo, hi, n).astype(np.float32)
        out = out + np.sqrt(var)[:, None, None] * rng.standard_normal(out.shape).astype(np.float32)
    return preprocess_images(out), q


def _draw_batch(clean, quats, pool, batch_size, aug, rng):
    """A training batch from one set: ``(1 - copy_fraction) B`` distinct particles from
    ``pool`` plus transformed copies of some of them (hard pairs: a view vs its own
    rotation or mirror)."""
    n_copy = int(round(batch_size * float(aug.get("copy_fraction", 0.0))))
    n_base = min(batch_size - n_copy, len(pool))
    n_copy = batch_size - n_base
    base = rng.choice(pool, n_base, replace=False)
    src = np.concatenate([base, rng.choice(base, n_copy)]) if n_copy else base
    return _augment_batch(clean[src], quats[src], aug, rng)


# ------------------------------------------------------------------------ the loss

def _pair_loss_tf(features, quats, group, loss="mse", weighting="density",
                  min_weight_distance=0.25, n_bins=16, head="angle"):
    """Weighted loss over all ``B (B - 1) / 2`` pairs of one batch.

    Returns ``(loss, d_hat, d_true, weights)``; the weights sum to 1 so the loss is a
    weighted mean. ``weighting``: ``'density'`` -> ``w ~ 1 / (1 - cos d)`` (random pairs
    have density ``(1 - cos d) / pi``) with ``d`` clipped below at
    ``min_weight_distance``; ``'histogram'`` -> ``w ~ 1 / count`` of the pair's bin
    among ``n_bins`` on ``[0, pi]``; ``'none'`` -> equal weights.
    """
    tf = _tf()
    b = tf.shape(features)[0]
    mask = tf.linalg.band_part(tf.ones((b, b), tf.bool), 0, -1)
    mask = tf.logical_and(mask, tf.logical_not(tf.cast(tf.eye(b), tf.bool)))
    f = tf.math.l2_normalize(features, axis=-1)
    cos = tf.matmul(f, f, transpose_b=True)
    d_hat = _cosine_to_distance_tf(tf.boolean_mask(cos, mask), head)
    d_true = tf.boolean_mask(symmetric_distance_tf(quats, quats, group), mask)
    if weighting == "density":
        w = 1.0 / tf.maximum(1.0 - tf.cos(d_true), 1.0 - math.cos(min_weight_distance))
    elif weighting == "histogram":
        bins = tf.clip_by_value(tf.cast(d_true / math.pi * n_bins, tf.int32), 0, n_bins - 1)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(d_true), bins, n_bins)
        w = 1.0 / tf.gather(counts, bins)
    elif weighting == "none":
        w = tf.ones_like(d_true)
    else:
        raise ValueError(f"Unknown weighting {weighting!r}")
    w = w / tf.reduce_sum(w)
    err = d_hat - d_true
    per_pair = tf.square(err) if loss == "mse" else tf.abs(err)
    return tf.reduce_sum(w * per_pair), d_hat, d_true, w


def _constant_baseline(d_list, w_list, loss):
    """Loss of the best constant predictor under the same per-batch weights."""
    d = np.concatenate(d_list)
    w = np.concatenate([wi / len(w_list) for wi in w_list])
    if loss == "mse":
        c = float(np.sum(w * d) / np.sum(w))
        return float(np.sum(w * (d - c) ** 2)), c
    order = np.argsort(d)
    cw = np.cumsum(w[order])
    c = float(d[order][np.searchsorted(cw, 0.5 * cw[-1])])      # weighted median
    return float(np.sum(w * np.abs(d - c))), c


# ---------------------------------------------------------------------- training

def make_strategy(gpus=None):
    """A ``tf.distribute`` strategy: ``MirroredStrategy`` over the visible GPUs (or the
    first ``gpus`` of them) when there are several, else the default strategy (one GPU
    or the CPU)."""
    tf = _tf()
    devices = [d.name.replace("physical_device:", "") for d in tf.config.list_physical_devices("GPU")]
    if gpus is not None:
        devices = devices[:int(gpus)]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


class _EpochLogs(dict):
    """The per-epoch logs given to ``progress``; ``str()`` is a one-line summary, so a
    ``ProgressReporter`` can print it as its ``extra``."""

    def __str__(self):
        return (f"loss {self['loss']:.4f}, val_loss {self['val_loss']:.4f} "
                f"(constant predictor {self['val_constant_baseline']:.4f}), "
                f"{self['pairs_per_s']:.0f} pairs/s, {self['images_per_s']:.0f} images/s, "
                f"epoch {self['epoch_time']:.1f}s, ETA {self['eta_s']:.0f}s")


def _as_sets(images, quaternions):
    if isinstance(images, (list, tuple)):
        if not isinstance(quaternions, (list, tuple)) or len(images) != len(quaternions):
            raise ValueError("Give as many quaternion arrays as image arrays.")
        return list(images), list(quaternions)
    return [images], [quaternions]


def _write_atomic(path, write):
    """Write through ``write(tmp_path)`` then rename: an interruption never leaves a
    half-written checkpoint."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _savez(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _dump_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh)


def train_distance_model(images, quaternions, symmetry="C1", architecture="resnet",
                         n_features=64, width=None, epochs=20, batch_size=64,
                         learning_rate=1e-3, loss="mse", weighting="density",
                         validation_fraction=0.2, patience=5, augmentation=None,
                         checkpoint_dir=None, seed=0, steps_per_epoch=None,
                         validation_batches=None, progress=None, strategy=None, model=None,
                         head="angle"):
    """Train ``G`` so that ``d_f(G(p_i), G(p_j)) ~ min_S d_q(q_i, q_j S)``.

    images: ``(N, S, S)`` array, or a list of such arrays (several proteins / data sets;
        pairs are only formed within a set; a batch comes from one set, chosen with
        probability proportional to its training size). Square images.
    quaternions: ``(N, 4)`` (or a list) of the images' orientations.
    symmetry: point group (``geometry.symmetry_group``) for the true distance.
    loss: ``'mse'`` or ``'mae'`` of ``d_hat - d_true`` (radians), pairs weighted by
        ``weighting`` (``'density'``, ``'histogram'``, ``'none'``; see ``_pair_loss_tf``).
    validation_fraction: of each set's PARTICLES held out (all pairs among them).
    patience: epochs without a better validation loss before stopping; the best weights
        are restored at the end. ``None`` never stops early.
    augmentation: dict overriding ``DEFAULT_AUGMENTATION`` (``rotations``, ``mirror``,
        ``copy_fraction``, ``noise_variance`` (lo, hi) sigma^2 relative to unit-variance
        clean images, ``max_shift`` pixels, ``ctf`` callable hook). Validation batches are
        drawn once with the same augmentation and fixed.
    checkpoint_dir: saved after every epoch (weights, optimiser, epoch, history, best);
        if it already holds a checkpoint, training RESUMES from it (same result as an
        uninterrupted run, up to floating-point non-determinism).
    steps_per_epoch: default ``N_train / distinct images per batch``.
    progress: ``callable(epoch, n_epochs, logs)`` after each epoch; ``logs`` is a dict
        (loss, val_loss, val_constant_baseline, pairs_per_s, images_per_s, epoch_time,
        eta_s) whose ``str`` is a one-line summary.
    strategy: a ``tf.distribute`` strategy (``make_strategy()``); each replica gets
        ``batch_size / replicas`` images of the batch and supervises the pairs among them.
    model: continue training this model instead of building a new one.
    head: how feature cosines become distances (``DISTANCE_HEADS``,
        ``cosine_to_distance``); ``'rotation'`` has no plateau at large distances. Store
        it with the model (``save_distance_model`` metadata ``head``): embeddings must be
        read with the head they were trained with.

    Returns ``(model, history)``: ``history`` has per-epoch lists ``loss``, ``val_loss``,
    ``pairs_per_s``, ``images_per_s``, ``epoch_time``, ``lr`` and scalars
    ``val_constant_baseline``, ``best_epoch``, ``best_val_loss``, ``stopped_early``.
    """
    tf = _tf()
    keras = _keras()
    if loss not in ("mse", "mae"):
        raise ValueError("loss must be 'mse' or 'mae'")
    aug = dict(DEFAULT_AUGMENTATION)
    aug.update(augmentation or {})
    unknown = set(aug) - set(DEFAULT_AUGMENTATION)
    if unknown:
        raise ValueError(f"Unknown augmentation keys {sorted(unknown)}")
    image_sets, quat_sets = _as_sets(images, quaternions)
    group = geometry.symmetry_group(symmetry).astype(np.float32)
    strategy = strategy or tf.distribute.get_strategy()
    n_rep = strategy.num_replicas_in_sync
    if batch_size % n_rep:
        raise ValueError(f"batch_size {batch_size} must divide among {n_rep} replicas")

    # Clean images standardised once; split each set by particle.
    split_rng = np.random.default_rng([seed, 1])
    clean, quats, train_pools, val_pools = [], [], [], []
    for imgs, q in zip(image_sets, quat_sets):
        imgs = np.asarray(imgs)
        if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
            raise ValueError(f"images must be (N, S, S) square, got {imgs.shape}")
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(imgs), 4):
            raise ValueError(f"quaternions must be ({len(imgs)}, 4), got {q.shape}")
        clean.append(preprocess_images(imgs)[..., 0])
        quats.append(geometry.normalize(q))
        perm = split_rng.permutation(len(imgs))
        n_val = int(round(validation_fraction * len(imgs)))
        if n_val and (n_val < 2 or len(imgs) - n_val < 2):
            raise ValueError("Too few particles for this validation_fraction.")
        val_pools.append(np.sort(perm[:n_val]))
        train_pools.append(np.sort(perm[n_val:]))
    n_train = np.array([len(p) for p in train_pools], float)
    set_prob = n_train / n_train.sum()
    per_batch_distinct = batch_size - int(round(batch_size * aug["copy_fraction"]))
    if steps_per_epoch is None:
        steps_per_epoch = max(1, int(n_train.sum() // per_batch_distinct))

    # Fixed validation batches.
    val_batches = []
    if validation_fraction > 0:
        val_rng = np.random.default_rng([seed, 2])
        n_val_total = sum(len(p) for p in val_pools)
        nvb = validation_batches or int(np.clip(n_val_total // per_batch_distinct, 1, 20))
        val_prob = np.array([len(p) for p in val_pools], float)
        val_prob /= val_prob.sum()
        for _ in range(nvb):
            s = val_rng.choice(len(val_pools), p=val_prob)
            bsz = min(batch_size, max(2, len(val_pools[s])))
            bsz -= bsz % n_rep
            val_batches.append(_draw_batch(clean[s], quats[s], val_pools[s], bsz, aug, val_rng))

    with strategy.scope():
        if model is None:
            model = build_embedding_network(architecture, n_features, width, seed)
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(model.trainable_variables)
        group_tf = tf.constant(group)

    _check_head(head)
    loss_kw = dict(loss=loss, weighting=weighting, head=head)

    def replica_train(x, q):
        with tf.GradientTape() as tape:
            feats = model(x, training=True)
            value = _pair_loss_tf(feats, q, group_tf, **loss_kw)[0]
            scaled = value / n_rep
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return value

    def replica_eval(x, q):
        feats = model(x, training=False)
        return _pair_loss_tf(feats, q, group_tf, **loss_kw)

    def split(arr):
        parts = np.split(arr, n_rep)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group]))

    sig = [tf.TensorSpec([None, None, None, 1], tf.float32), tf.TensorSpec([None, 4], tf.float32)]

    # autograph=False: the steps have no tensor-dependent Python control flow.
    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(x, q):
        v = strategy.run(replica_train, args=(x, q))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)

    @tf.function(input_signature=sig, autograph=False)
    def eval_step(x, q):
        return replica_eval(x, q)

    # Validation baseline: best constant under the same weighting, on the same pairs.
    d_list, w_list = [], []
    for x, q in val_batches:
        _, _, d, w = eval_step(tf.constant(x), tf.constant(q, tf.float32))
        d_list.append(d.numpy().astype(np.float64))
        w_list.append(w.numpy().astype(np.float64))
    baseline = _constant_baseline(d_list, w_list, loss)[0] if val_batches else float("nan")

    history = dict(loss=[], val_loss=[], pairs_per_s=[], images_per_s=[], epoch_time=[], lr=[],
                   val_constant_baseline=baseline, best_epoch=-1, best_val_loss=float("inf"),
                   stopped_early=False)
    start_epoch, wait = 0, 0
    best_weights = None
    ckpt_state = ckpt_arrays = best_path = None
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
        ckpt_state = os.path.join(checkpoint_dir, "state.json")
        ckpt_arrays = os.path.join(checkpoint_dir, "checkpoint.npz")
        best_path = os.path.join(checkpoint_dir, "best.npz")
        if os.path.exists(ckpt_state) and os.path.exists(ckpt_arrays):
            with open(ckpt_state) as fh:
                state = json.load(fh)
            with np.load(ckpt_arrays) as z:
                model.set_weights([z[f"w{i}"] for i in range(len(model.weights))])
                for i, v in enumerate(optimizer.variables):
                    v.assign(z[f"o{i}"])
            history = state["history"]
            start_epoch, wait = state["epoch"], state["wait"]
            if os.path.exists(best_path):
                with np.load(best_path) as z:
                    best_weights = [z[f"w{i}"] for i in range(len(model.weights))]

    pairs_per_step = (batch_size // n_rep) * (batch_size // n_rep - 1) // 2 * n_rep
    for epoch in range(start_epoch, epochs):
        if patience is not None and wait >= patience:
            history["stopped_early"] = True
            break
        rng = np.random.default_rng([seed, 3, epoch])   # per epoch: resumable, reproducible
        t0 = time.perf_counter()
        losses = []
        for step in range(steps_per_epoch):
            s = rng.choice(len(clean), p=set_prob)
            x, q = _draw_batch(clean[s], quats[s], train_pools[s], batch_size, aug, rng)
            losses.append(train_step(split(x), split(q.astype(np.float32))))
            if step == 0:
                losses[0] = float(losses[0])
                t_first = time.perf_counter()   # rates exclude the first step (tracing)
        losses = [float(v) for v in losses]
        t_end = time.perf_counter()
        dt = t_end - t0
        timed_steps = steps_per_epoch - 1 if steps_per_epoch > 1 else 1
        rate_dt = (t_end - t_first) if steps_per_epoch > 1 else dt
        val = (float(np.mean([float(eval_step(tf.constant(x), tf.constant(q, tf.float32))[0])
                              for x, q in val_batches])) if val_batches else float("nan"))
        history["loss"].append(float(np.mean(losses)))
        history["val_loss"].append(val)
        history["pairs_per_s"].append(timed_steps * pairs_per_step / rate_dt)
        history["images_per_s"].append(timed_steps * batch_size / rate_dt)
        history["epoch_time"].append(dt)
        history["lr"].append(float(learning_rate))
        monitor = val if val_batches else history["loss"][-1]
        if monitor < history["best_val_loss"]:
            history["best_val_loss"], history["best_epoch"], wait = monitor, epoch, 0
            best_weights = [w.copy() for w in model.get_weights()]
            if best_path:
                _write_atomic(best_path, lambda p: _savez(
                    p, {f"w{i}": w for i, w in enumerate(best_weights)}))
        else:
            wait += 1
        if checkpoint_dir:
            arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
            arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
            _write_atomic(ckpt_arrays, lambda p: _savez(p, arrays))
            _write_atomic(ckpt_state, lambda p: _dump_json(
                p, dict(epoch=epoch + 1, wait=wait, history=history)))
        if progress is not None:
            done_times = history["epoch_time"]   # the last one: no tracing in it
            logs = _EpochLogs(epoch=epoch + 1, loss=history["loss"][-1], val_loss=val,
                              val_constant_baseline=baseline,
                              pairs_per_s=history["pairs_per_s"][-1],
                              images_per_s=history["images_per_s"][-1], epoch_time=dt,
                              eta_s=float(done_times[-1]) * (epochs - epoch - 1))
            progress(epoch + 1, epochs, logs)
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, history


# ------------------------------------------------------------------ using a model

def embed(model, images, batch_size=256, progress=None):
    """Unit feature vectors ``(N, F)`` float32 of images ``(N, S, S)`` (standardised by
    ``preprocess_images`` here). ``progress(done, total)`` after each batch."""
    tf = _tf()
    x = preprocess_images(images)
    n = len(x)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
                 autograph=False)
    def forward(batch):
        return tf.math.l2_normalize(model(batch, training=False), axis=-1)

    out = []
    for start in range(0, n, batch_size):
        out.append(forward(tf.constant(x[start:start + batch_size])).numpy())
        if progress is not None:
            progress(min(start + batch_size, n), n)
    if not out:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(out).astype(np.float32)


def estimate_distances(model, images_a, images_b, batch_size=256, head="angle"):
    """``d_hat`` (radians) of the pairs ``(images_a[i], images_b[i])`` -> ``(N,)``."""
    if len(images_a) != len(images_b):
        raise ValueError("images_a and images_b must have the same length")
    return feature_distance(embed(model, images_a, batch_size),
                            embed(model, images_b, batch_size), head).astype(np.float32)


def _metadata_path(path):
    root, _ = os.path.splitext(str(path))
    return root + ".json"


def save_distance_model(model, path, metadata=None):
    """Save ``model`` to one ``.keras`` file and ``metadata`` (a JSON-able dict: image
    size, pixel size, architecture, symmetry, training summary...) to the ``.json``
    beside it. Returns ``(model_path, metadata_path)``."""
    path = str(path)
    if not path.endswith(".keras"):
        raise ValueError(f"The model file name must end with .keras: {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    meta_path = _metadata_path(path)
    meta = dict(metadata or {})
    meta.setdefault("n_features", int(model.output_shape[-1]))
    meta.setdefault("format", "orientlearn distance model 1")
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=1, default=_json_default)
    return path, meta_path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"Not JSON serialisable: {type(o)}")


def load_distance_model(path):
    """Load ``(model, metadata)`` saved by ``save_distance_model``.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` when it is
    not a readable Keras model (truncated, corrupt, another format)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No distance model file at {path}")
    _scale_norm_class()   # registers the custom layer
    keras = _keras()
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive")
        model = keras.models.load_model(path, compile=False,
                                        custom_objects={"ScaleNorm": _scale_norm_class()})
    except Exception as exc:  # keras raises many types for damaged files
        raise ValueError(f"Could not read the distance model {path}: it is corrupt or not a "
                         f"Keras model file ({type(exc).__name__}: {exc})") from exc
    meta = {}
    meta_path = _metadata_path(path)
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Corrupt metadata file {meta_path}: {exc}") from exc
    meta.setdefault("head", "angle")      # models saved before heads existed
    return model, meta


def validation_indices(set_sizes, validation_fraction=0.2, seed=0):
    """The particles ``train_distance_model`` holds out, per training set.

    ``set_sizes``: an int or a list of ints (particles per set). Returns a list of sorted
    index arrays, one per set: the same split ``train_distance_model`` makes with the same
    ``validation_fraction`` and ``seed`` (so held-out particles can be evaluated later).
    """
    sizes = [set_sizes] if np.isscalar(set_sizes) else list(set_sizes)
    split_rng = np.random.default_rng([seed, 1])
    out = []
    for n in sizes:
        perm = split_rng.permutation(int(n))
        out.append(np.sort(perm[:int(round(validation_fraction * n))]))
    return out
