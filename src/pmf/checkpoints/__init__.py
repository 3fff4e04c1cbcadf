"""Checkpoint formats, with no trainer in sight: ``load`` (reading any weights: local files, run folders, hub
names, URLs; ``load_checkpoint``), ``schema`` (``TrainingCheckpoint``, what a training checkpoint holds, and its
one file writer), ``metadata`` (``ModelMetadata``, what a model's files say about it), ``files`` (the names and
listing of training checkpoint files), ``sharded`` (DCP folders), ``hub`` and ``hub_card`` (the Hugging Face hub
folder and its model card) and ``download`` (files that live elsewhere). The trainer's saving is
``pmf.training.saver``."""
