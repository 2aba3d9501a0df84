"""Training: reads slides with annotations, patch folders or PCam files; produces
checkpoints with their model card. ``config``, ``datasets``, ``sampling``,
``augment``, ``loop``, ``mining`` (hard negatives), ``metrics``, ``checkpoint``
(resume), ``ddp``, ``train`` (the command's entry), ``classify`` (scoring patches).
"""
