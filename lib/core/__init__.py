"""The estimator core (docs/design.md §2), torch only: quantizers and STE surrogates, losses,
models (the toy :class:`~lib.core.models.BinaryMLP`, :func:`~lib.core.resnet.xnor_resnet18`), the
perturbation engine, the estimators (:func:`~lib.core.estimators.cdg`, ``nes``, ``nes_multi``,
``nes_sigmas``, ``ste``, ``smoothed_exact``) and their evaluation (normalisation, loss decrease, cosine)."""
