"""The closed vocabularies of the configs and the command line, each written once: a ``Literal`` type for the
config annotations and its tuple of values for checks, ``choices`` and messages."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16"]  # "bf16": autocast on GPU
ParallelMode = Literal["ddp", "fsdp", "hsdp"]  # replicated, FSDP2 over all ranks, replicate x shard
ReduceMode = Literal["auto", "ordered", "native"]  # gradient averaging (pmf.parallel.reduce_mode)
JvpMode = Literal["split", "fused", "inline"]  # how du/dt is computed, all exact (pmf.objective.pmf_loss)
TangentAttention = Literal["math", "triton"]  # attention's tangent in the inline du/dt
Prediction = Literal["x", "u"]  # what the network's u-head predicts (spec section 3)
OptimizerName = Literal["muon", "adamw"]
Schedule = Literal["constant", "warmup", "cosine"]
ClassDropout = Literal["first-rows", "per-sample"]  # which rows lose their label (pmf.objective.drop_labels)
# what pmf train minimises: the pMF loss, or FD-loss post-training (pmf.posttrain.fd_objective)
Objective = Literal["pmf", "fd"]
VHeadInit = Literal["copy", "fresh"]  # a missing v-head of --init: the u-head's blocks, or the fresh model's
BuiltinData = Literal["mnist-5k", "digits"]  # the small data sets shipped in registry packages (pmf.data.builtin)

PRECISIONS = get_args(Precision)
PARALLEL_MODES = get_args(ParallelMode)
REDUCE_MODES = get_args(ReduceMode)
JVP_MODES = get_args(JvpMode)
TANGENT_ATTENTIONS = get_args(TangentAttention)
PREDICTIONS = get_args(Prediction)
OPTIMIZERS = get_args(OptimizerName)
SCHEDULES = get_args(Schedule)
CLASS_DROPOUTS = get_args(ClassDropout)
V_HEAD_INITS = get_args(VHeadInit)
OBJECTIVES = get_args(Objective)
BUILTIN_DATA = get_args(BuiltinData)
