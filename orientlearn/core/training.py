"""Training the distance network (paper §3.3-3.4): augmentation, pair loss, training loop.

Training embeds a batch of ``B`` images once and supervises all ``B (B - 1) / 2`` pairs
in it (DESIGN.md: pair-by-pair training is ~100x slower). The pairs are weighted so the
distribution of true distances is effectively uniform on ``[0, pi]``. Each batch also
holds image-side transformed copies (rotations by multiples of pi/2, the mirror
``y -> -y``) of some of its images, with quaternions transformed accordingly
(``geometry`` conventions: ``q' = g q``), so the network has to tell an image from its
mirror (true distance pi) and from its rotations (pi/2, pi): DESIGN.md's "mirror false
neighbours".

Conventions: images ``(N, S, S)`` indexed ``img[y, x]`` with the centre at ``S // 2``;
the image transforms are ``image_ops.transform_images`` (mirror ``y -> -y``, then ``k``
counter-clockwise quarter turns: the projection of ``image_ops.transform_quaternion(q,
k, mirror)``), the same ones recovery uses (``graph.image_transforms``); checked against
a real-space projector in ``tests/test_distance.py``.

Everything here is pure numpy / TensorFlow; no Scipion.
"""
import json
import math
import os
import time

import numpy as np

from . import geometry
from .image_ops import transform_images, transform_quaternion
from .model_io import _dump_json, _savez, _write_atomic, train_validation_split
from .network import (
    DEFAULT_HEAD,
    PAIR_LOSSES,
    _check_head,
    _cosine_to_distance_tf,
    _keras,
    _tf,
    build_embedding_network,
    preprocess_images,
)

__all__ = [
    "train_distance_model", "make_strategy", "symmetric_distance_tf",
    "ctf_augmentation", "DEFAULT_AUGMENTATION",
]


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


def ctf_augmentation(pixel_size, defocus_range=(1e4, 3e4), astigmatism=(0.0, 500.0),
                     voltage=300.0, cs=2.7, amplitude_contrast=0.1):
    """A ``ctf`` hook for ``train_distance_model``'s ``augmentation``: multiplies each
    image's spectrum by a random CTF (``ctf.ctf_2d_batch``; defocus Angstrom uniform
    on ``defocus_range``, astigmatism ``du - dv`` on ``astigmatism``, random angle), drawn
    from the batch's seeded generator. ``pixel_size`` Angstrom of the training images."""
    from . import ctf

    def hook(images, rng):
        n, size = len(images), images.shape[-1]
        mean = rng.uniform(*defocus_range, n)
        astig = rng.uniform(*astigmatism, n)
        ctfs = ctf.ctf_2d_batch(size, pixel_size, mean + astig / 2, mean - astig / 2,
                                    rng.uniform(0, np.pi, n), voltage=voltage, cs=cs,
                                    amplitude_contrast=amplitude_contrast)
        return preprocess_images(ctf.apply_ctf(images, ctfs))[..., 0]

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
                out[sel] = transform_images(clean[sel], k, m)
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


def _pair_loss_tf(features, quats, group, loss="mse", weighting="density",
                  min_weight_distance=0.25, n_bins=16, head=DEFAULT_HEAD):
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


def make_strategy(gpus=None):
    """A ``tf.distribute`` strategy: ``MirroredStrategy`` over the visible GPUs (or the
    first ``gpus`` of them) when there are several, else the default strategy (one GPU
    or the CPU)."""
    tf = _tf()
    devices = [d.name.replace("physical_device:", "")
               for d in tf.config.list_physical_devices("GPU")]
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


def train_distance_model(images, quaternions, symmetry="C1", architecture="resnet",
                         n_features=64, width=None, epochs=20, batch_size=64,
                         learning_rate=1e-3, loss="mse", weighting="density",
                         validation_fraction=0.2, patience=5, augmentation=None,
                         checkpoint_dir=None, seed=0, steps_per_epoch=None,
                         validation_batches=None, progress=None, strategy=None, model=None,
                         head=DEFAULT_HEAD):
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
        ``cosine_to_distance``); ``'rotation'`` (the default) has no plateau at large
        distances. Store it with the model (``save_distance_model`` metadata ``head``):
        embeddings must be read with the head they were trained with.

    Returns ``(model, history)``: ``history`` has per-epoch lists ``loss``, ``val_loss``,
    ``pairs_per_s``, ``images_per_s``, ``epoch_time``, ``lr`` and scalars
    ``val_constant_baseline``, ``best_epoch``, ``best_val_loss``, ``stopped_early``.
    """
    tf = _tf()
    keras = _keras()
    if loss not in PAIR_LOSSES:
        raise ValueError(f"loss must be one of {PAIR_LOSSES}, got {loss!r}")
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
    clean, quats, train_pools, val_pools = [], [], [], []
    splits = train_validation_split([len(x) for x in image_sets], validation_fraction, seed)
    for imgs, q, (train_idx, val_idx) in zip(image_sets, quat_sets, splits):
        imgs = np.asarray(imgs)
        if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
            raise ValueError(f"images must be (N, S, S) square, got {imgs.shape}")
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(imgs), 4):
            raise ValueError(f"quaternions must be ({len(imgs)}, 4), got {q.shape}")
        clean.append(preprocess_images(imgs)[..., 0])
        quats.append(geometry.normalize(q))
        if len(val_idx) and (len(val_idx) < 2 or len(train_idx) < 2):
            raise ValueError("Too few particles for this validation_fraction.")
        val_pools.append(val_idx)
        train_pools.append(train_idx)
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
