"""The embedding network ``G`` and the distance heads of the learned distance (paper
eq. 3, §2.2, §3.3-3.4).

``d_hat(p_i, p_j) = d_f(G(p_i), G(p_j)) ~ d_q(q_i, q_j)`` where ``G`` is a fully
convolutional network (any image size, global average pooling to ``F`` features) and
``d_f`` a distance head on the cosine ``c`` of the feature vectors, in ``[0, pi]``
radians, the range of ``d_q``: ``'rotation'``: ``arccos((3 c - 1) / 2)``; ``'angle'``:
``arccos(c)`` (the paper's).

Images ``(N, S, S)`` indexed ``img[y, x]`` with the centre at ``S // 2``.
Everything here is pure numpy / TensorFlow; no Scipion.
"""
import numpy as np

__all__ = [
    "build_embedding_network", "feature_distance", "feature_distance_tf", "preprocess_images",
    "embed", "estimate_distances", "distance_matrix", "ARCHITECTURES", "DISTANCE_HEADS",
    "DEFAULT_HEAD", "LEGACY_HEAD", "PAIR_LOSSES",
    "cosine_to_distance", "angle_to_distance",
]


ARCHITECTURES = ("resnet", "paper")


#: How the cosine ``c`` of the angle between two feature vectors becomes a distance:
#: ``'rotation'``: ``arccos((3 c - 1) / 2)``; ``'angle'``: ``arccos(c)`` (the paper's d_f).
DISTANCE_HEADS = ("rotation", "angle")
#: The product default head, everywhere a head is a parameter.
DEFAULT_HEAD = "rotation"
#: The head of models saved before their metadata recorded one (they all used it).
LEGACY_HEAD = "angle"
#: Losses of the training pairs (eq. 5): squared or absolute distance error.
PAIR_LOSSES = ("mse", "mae")


def _tf():
    import tensorflow as tf  # imported lazily: numpy-only helpers need no TF start-up
    return tf


def _keras():
    import keras
    return keras


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


def _check_head(head):
    if head not in DISTANCE_HEADS:
        raise ValueError(f"Unknown distance head {head!r}; choose from {DISTANCE_HEADS}.")


def cosine_to_distance(cos, head=DEFAULT_HEAD):
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


def angle_to_distance(angle, head=DEFAULT_HEAD):
    """``cosine_to_distance`` of ``cos(angle)``: maps feature angles (radians) to
    distances; the identity for the ``'angle'`` head."""
    return cosine_to_distance(np.cos(np.asarray(angle, dtype=np.float64)), head)


def feature_distance(fa, fb, head=DEFAULT_HEAD):
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


def feature_distance_tf(fa, fb, eps=1e-6, head=DEFAULT_HEAD):
    """TensorFlow ``feature_distance``, finite gradients (see ``_cosine_to_distance_tf``)."""
    _check_head(head)
    tf = _tf()
    cos = tf.reduce_sum(tf.math.l2_normalize(fa, -1) * tf.math.l2_normalize(fb, -1), -1)
    return _cosine_to_distance_tf(cos, head, eps)


def distance_matrix(features, head=DEFAULT_HEAD):
    """All-pairs distances of features ``(N, F)`` -> ``(N, N)`` float32 radians, zero
    diagonal."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)
    d = cosine_to_distance(f @ f.T, head).astype(np.float32)
    np.fill_diagonal(d, 0.0)
    return d


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


def estimate_distances(model, images_a, images_b, batch_size=256, head=DEFAULT_HEAD):
    """``d_hat`` (radians) of the pairs ``(images_a[i], images_b[i])`` -> ``(N,)``."""
    if len(images_a) != len(images_b):
        raise ValueError("images_a and images_b must have the same length")
    return feature_distance(embed(model, images_a, batch_size),
                            embed(model, images_b, batch_size), head).astype(np.float32)
