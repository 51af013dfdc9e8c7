"""The vocabulary-order check (:mod:`sampled_softmax.order_check`) on JAX arrays: concrete
labels are counted at once; traced ones (under ``jit``) through ``jax.debug.callback``, added
only while the check is pending when the step is traced (a no-op once the verdict is given)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import order_check as OC

REMEDY = ("use samplers.unigram(num_classes, counts) with the label counts (or counts learned with "
          "samplers.learned_unigram_update), or sampler='uniform'")


def observe(labels, valid, num_classes: int, front: str = "jax", remedy: str = REMEDY) -> None:
    """Count the ``valid`` labels for the check of ``(front, num_classes)``."""
    check = OC.order_check(front, num_classes, remedy)
    if not check.pending:
        return
    live = valid & (labels >= 0) & (labels < num_classes)
    counts = jnp.stack([live.sum(), (live & (labels >= OC.upper_half(num_classes))).sum()])
    if isinstance(counts, jax.core.Tracer):
        try:
            jax.debug.callback(check.observe, counts)
        except NotImplementedError:
            # Some traces take no host callback (eager shard_map in some JAX versions): the
            # check waits for a call it can see (eager, or jitted); the loss goes on.
            return
    else:
        check.observe(np.asarray(counts))
