"""Shapes, dtypes and values of backend tensors, for the retrieval layers' checks."""

from __future__ import annotations

from ._backend import keras, ops


def _shape(x):
    return tuple(x.shape)


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _values_now(x):
    """``x`` as a NumPy array when its values are known (eager), else None (traced)."""
    try:
        return ops.convert_to_numpy(x)
    except Exception:  # a tracer or a symbolic tensor: checked by the nan rule instead
        return None
