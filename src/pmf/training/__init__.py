"""The trainer (spec sections 3 and 6): ``loop`` (the training loop, ``train``), ``build`` (building and resuming
a run), ``config`` (the training config and recipes), ``state`` (the training state in its two checkpoint forms),
``saver`` (the run's checkpoints as it trains), ``optim``, ``ema``, ``accumulate``, ``finetune`` (``--init``),
``monitor``, ``tracking`` (W&B) and ``stopping`` (Ctrl-C / SIGTERM)."""
