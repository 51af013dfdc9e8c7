"""Applications built on the library: the ``sampled-softmax demo`` language model
(:mod:`.demo`), the estimator diagnostics (:mod:`.diagnose`) and their corpora (:mod:`.corpus`).
The library modules never import these; they need PyTorch (the ``torch`` extra) and show
progress with ``tqdm`` when it is installed (the ``apps`` extra)."""
