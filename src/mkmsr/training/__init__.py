"""Training and evaluation, on a prepared dataset (:mod:`mkmsr.data`) and a model (:mod:`mkmsr.models`).

``train`` (the loop; ``distributed``: DDP under torchrun; ``tensorboard_log``: per-epoch scalars)
-> ``evaluate`` (full ranking; ``metrics``: pure metric functions) -> ``tune`` (Optuna search)
and ``benchmark`` (models x datasets x seeds, the paper's figures). Writes checkpoints through
:mod:`mkmsr.checkpoint`; imports nothing from ``serving``.
"""
