"""A trained distance network bound to what it needs to be used: ``DistanceModel``.

The Keras embedding ``G`` alone does not say how its features become distances (the
*head*, ``network.DISTANCE_HEADS``) nor on which image grid (box ``S`` pixels at
``pixel_size`` Angstrom) it was trained. ``DistanceModel`` keeps them together, from
the model's metadata (``model_io.save_distance_model``), and offers the three things
every caller needs:

* ``prepare(images, pixel_size)``: Fourier-resample particles to the model's pixel
  size, then centre-crop or zero-pad to its box;
* ``embed(images, transforms)``: unit features ``(K, B, F)`` of a batch under ``K``
  image-side transforms (``graph.image_transforms``), all in ONE call of a forward
  function traced once per model (not once per transform or per batch);
* ``distance_map(angles)``: feature angles to distance estimates with the model's head.
"""
import numpy as np

__all__ = ["DistanceModel"]


class DistanceModel:
    """A Keras embedding network with its metadata.

    ``metadata`` keys used here: ``head`` (default ``network.LEGACY_HEAD``: models saved before
    heads existed), ``image_size`` (px) and ``pixel_size`` (A) of the training images (None
    when unknown: ``prepare`` then only checks nothing and passes images through).
    """

    def __init__(self, keras_model, metadata=None, path=None):
        from .network import DISTANCE_HEADS, LEGACY_HEAD
        self.keras_model = keras_model
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("head", LEGACY_HEAD)
        if self.head not in DISTANCE_HEADS:
            raise ValueError(f"Unknown distance head {self.head!r} in the model metadata; "
                             f"expected one of {DISTANCE_HEADS}.")
        self.path = path
        self._forward = None

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path):
        """Load a model saved by ``save`` / ``model_io.save_distance_model`` (``.keras``
        with its metadata). Raises ``FileNotFoundError`` / ``ValueError`` with the file
        name when it is missing or unreadable."""
        from .model_io import load_distance_model
        model, meta = load_distance_model(path)
        return cls(model, meta, path=str(path))

    def save(self, path):
        """Save the network and its metadata; returns the model path."""
        from .model_io import save_distance_model
        self.path = save_distance_model(self.keras_model, path, self.metadata)[0]
        return self.path

    # ------------------------------------------------------------ properties
    @property
    def head(self):
        return self.metadata["head"]

    @property
    def image_size(self):
        v = self.metadata.get("image_size")
        return None if v is None else int(v)

    @property
    def pixel_size(self):
        v = self.metadata.get("pixel_size")
        return None if v is None else float(v)

    @property
    def n_features(self):
        return int(self.keras_model.output_shape[-1])

    def __repr__(self):
        return (f"DistanceModel({self.path or 'in memory'}, {self.image_size} px at "
                f"{self.pixel_size} A/px, head {self.head!r}, {self.n_features} features)")

    # -------------------------------------------------------------- images
    def grid_for(self, image_size, pixel_size):
        """``(resampled size, model box)`` for particles of ``image_size`` px at
        ``pixel_size`` A: the size after Fourier resampling to the model's pixel size,
        and the model's box the result is cropped or padded to."""
        if self.pixel_size is None or self.image_size is None:
            return int(image_size), int(image_size)
        new = int(round(image_size * float(pixel_size) / self.pixel_size))
        return max(new, 1), self.image_size

    def prepare(self, images, pixel_size):
        """Particles ``(B, S, S)`` at ``pixel_size`` A -> float32 ``(B, S', S')`` on the
        model's grid (Fourier resampling, then centred crop or zero-padding)."""
        from . import image_ops
        images = np.asarray(images, dtype=np.float32)
        new, box = self.grid_for(images.shape[-1], pixel_size)
        if new != images.shape[-1]:
            images = image_ops.downsample(images, new)
        if box != images.shape[-1]:
            images = image_ops.crop_or_pad(images, box)
        return images

    def check_particles(self, image_size, pixel_size, tolerance=0.15):
        """A message when particles of ``image_size`` px at ``pixel_size`` A span a box
        more than ``tolerance`` away from the model's box (in Angstrom), else None."""
        if self.pixel_size is None or self.image_size is None:
            return None
        box_a = image_size * pixel_size
        model_a = self.image_size * self.pixel_size
        if abs(box_a - model_a) > tolerance * model_a:
            return (f"The particles' box is {box_a:.0f} A but the model was trained on "
                    f"{model_a:.0f} A boxes: re-extract or resize the particles to a similar "
                    "physical box (they are resampled to the model's pixel size "
                    "automatically).")
        return None

    # ----------------------------------------------------------- embedding
    def _forward_fn(self):
        """The forward pass, a ``tf.function`` traced once for any batch and image size."""
        if self._forward is None:
            import tensorflow as tf
            model = self.keras_model

            @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
                         autograph=False)
            def forward(batch):
                return tf.math.l2_normalize(model(batch, training=False), axis=-1)

            self._forward = forward
        return self._forward

    def features(self, images):
        """Unit features ``(B, F)`` float32 of images ``(B, S, S)`` already on the model's
        grid (standardised per image by ``network.preprocess_images``)."""
        import tensorflow as tf

        from .network import preprocess_images
        if len(images) == 0:
            return np.zeros((0, self.n_features), np.float32)
        x = preprocess_images(images)
        return self._forward_fn()(tf.constant(x)).numpy().astype(np.float32)

    def embed(self, images, transforms=None):
        """Features ``(K, B, F)`` of images ``(B, S, S)`` (on the model's grid) under the
        ``K`` image-side transforms ``(K, 4)`` (default: the identity only), in one
        forward call over the ``K B`` transformed images."""
        from . import image_ops
        images = np.asarray(images, dtype=np.float32)
        if transforms is None:
            transforms = np.array([[1.0, 0.0, 0.0, 0.0]])
        stacked = np.concatenate([image_ops.apply_image_transform(images, g) for g in transforms])
        return self.features(stacked).reshape(len(transforms), len(images), -1)

    def distance_map(self, angles):
        """Distance estimates (radians) from feature angles with the model's head."""
        from .network import angle_to_distance
        return angle_to_distance(angles, self.head)

    def pair_distances(self, features_a, features_b):
        """``d_hat`` (radians) between feature rows ``(..., F)`` with the model's head."""
        from .network import feature_distance
        return feature_distance(features_a, features_b, self.head)
