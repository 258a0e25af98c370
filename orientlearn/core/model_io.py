"""Saving and loading a distance model (Keras archive + JSON metadata), and the
train / validation split of training sets.
"""
import json
import os
import zipfile

import numpy as np

from .network import LEGACY_HEAD, _keras, _scale_norm_class

__all__ = [
    "save_distance_model", "load_distance_model", "train_validation_split",
    "validation_indices",
]


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
    meta.setdefault("head", LEGACY_HEAD)      # models saved before heads existed
    return model, meta


def train_validation_split(set_sizes, validation_fraction=0.2, seed=0):
    """The split of ``train_distance_model``: per training set, the particles it trains on
    and the ones it holds out (a random ``validation_fraction`` of the set, rounded).

    ``set_sizes``: an int or a list of ints (particles per set). Returns a list, one per
    set, of ``(train, validation)`` sorted index arrays; the same ``seed`` gives the same
    split (so held-out particles can be evaluated later).
    """
    sizes = [set_sizes] if np.isscalar(set_sizes) else list(set_sizes)
    split_rng = np.random.default_rng([seed, 1])
    out = []
    for n in sizes:
        perm = split_rng.permutation(int(n))
        n_val = int(round(validation_fraction * n))
        out.append((np.sort(perm[n_val:]), np.sort(perm[:n_val])))
    return out


def validation_indices(set_sizes, validation_fraction=0.2, seed=0):
    """The particles ``train_distance_model`` holds out, per training set: the validation
    halves of ``train_validation_split`` (a list of sorted index arrays)."""
    return [val for _, val in train_validation_split(set_sizes, validation_fraction, seed)]
