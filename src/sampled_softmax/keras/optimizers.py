"""``LazyAdam``: Adam that updates only the rows a row-sparse gradient touches."""

from __future__ import annotations

from ._backend import _lazy_adam_update, keras


@keras.saving.register_keras_serializable(package="sampled_softmax")
class LazyAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` that updates only the rows a row-sparse gradient touches.

    On the TensorFlow backend the gradients of ``SampledSoftmax``'s table and of ``Embedding``
    tables are ``tf.IndexedSlices`` over the rows a step read, but ``Adam`` turns them into
    dense updates of every row of the weights and of both moments (for ``V = 100k, D = 1024``
    that is 300M floats written per step, most of a sampled softmax step's time). ``LazyAdam``
    applies Adam's update to those rows only, with their summed gradient; rows a step did not
    touch keep their weights and moments (the semantics of ``torch.optim.SparseAdam`` and of
    TensorFlow Addons' ``LazyAdam``). Dense gradients, and every gradient on the JAX and PyTorch
    backends (which arrive dense), get ``Adam``'s update unchanged. ``weight_decay``, if set, is
    applied densely by Keras before the update.

    Same arguments as ``keras.optimizers.Adam``; ``amsgrad=True`` is not lazy (Adam's update).
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _lazy_adam_update(self, gradient, variable, learning_rate):
            return super().update_step(gradient, variable, learning_rate)
