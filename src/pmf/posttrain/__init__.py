"""FD-loss post-training (``pmf train --objective fd``; Yang et al., arXiv 2604.28190): ``fd_loss`` (the loss),
``fd_stats`` (the generated features' statistics state), ``fd_reference`` (the real data's statistics),
``fd_objective`` (the objective on the trainer) and ``fd_config`` (the ``--fd-*`` section of the training
config)."""
