"""Typed training configuration (the named recipes are ``pmf.training.recipes``). Every config validates on
construction with messages that name the field; the resolved config is saved as JSON beside each checkpoint and
read back with ``TrainConfig.from_dict``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import PMFError
from ..model_configs import PRESETS, check_choices, dataclass_from_dict, doc
from ..perceptual.config import PerceptualConfig
from ..posttrain.fd_config import FDConfig
from ..sampling_setting import check_guidance
from ..vocabulary import (
    ClassDropout,
    JvpMode,
    Objective,
    OptimizerName,
    ParallelMode,
    Precision,
    Prediction,
    ReduceMode,
    Schedule,
    TangentAttention,
    VHeadInit,
)


def parse_class_map(text: str | None) -> dict[str, str]:
    """'NEW=OLD,NEW=OLD' (names or numbers) -> {NEW: OLD}: the text form of ``TrainConfig.class_map``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        new, sep, old = part.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise PMFError(f"--class-map takes NEW=OLD pairs (class names or numbers), got {part!r}")
        out[new.strip()] = old.strip()
    return out


class ConfigValueError(PMFError):
    """A config field's value outside its range; ``field`` is its dotted path (``steps``, ``optim.ns_steps``), so
    that a command can name the flag that sets it."""

    def __init__(self, field: str, want: str, value):
        super().__init__(f"{field} must be {want}, got {value!r}")
        self.field = field


def _check(cond: bool, name: str, value, want: str) -> None:
    if not cond:
        raise ConfigValueError(name, want, value)


@dataclass
class LossConfig:
    """Randomness and weighting of the pMF objective (spec section 3)."""

    P_mean: float = doc(0.8, "centre of the logit-normal time draws")
    P_std: float = doc(0.8, "spread of the logit-normal time draws")
    data_proportion: float = doc(0.5, "fraction of the batch drawn with r = t")
    cfg_max: float = doc(7.0, "largest guidance scale drawn in training")
    cfg_beta: float = doc(1.0, "exponent of the guidance-scale distribution")
    class_dropout_prob: float = doc(0.1, "probability of dropping the class label")
    class_dropout: ClassDropout = doc(
        "first-rows", "which rows lose their label: first-rows (the release: the first rows of the batch, which are "
        "the r = t rows) or per-sample (any row, with the same probability)", flag="--class-dropout")
    tr_uniform: bool = doc(False, "draw 10% of the times uniformly")
    norm_p: float = doc(1.0, "power of the adaptive loss weight")
    norm_eps: float = doc(0.01, "epsilon of the adaptive loss weight")
    prediction: Prediction = doc("x", "what the u-head predicts")
    jvp: JvpMode | None = doc(None, "how du/dt is computed (all exact)", flag="--jvp", none="pmf_loss's default")
    tangent_attention: TangentAttention = doc(
        "math", "attention's tangent in the inline du/dt: math or the fused Triton kernel (CUDA)",
        flag="--tangent-attention")

    def __post_init__(self) -> None:
        check_choices(self, "loss")
        _check(self.P_std > 0, "loss.P_std", self.P_std, "> 0")
        _check(0 <= self.data_proportion <= 1, "loss.data_proportion", self.data_proportion, "in [0, 1]")
        _check(self.cfg_max >= 0, "loss.cfg_max", self.cfg_max, ">= 0")
        _check(0 <= self.class_dropout_prob <= 1, "loss.class_dropout_prob", self.class_dropout_prob, "in [0, 1]")
        _check(self.norm_eps > 0, "loss.norm_eps", self.norm_eps, "> 0")
        _check(self.tangent_attention == "math" or self.jvp in (None, "inline"), "loss.jvp", self.jvp,
               "None or 'inline' with loss.tangent_attention 'triton' (the kernel serves the inline du/dt only)")


@dataclass
class OptimConfig:
    """Muon (2-D weights) + Adam (everything else) as in the release, or AdamW on everything (ablation)."""

    name: OptimizerName = doc("muon", "Muon for 2-D weights with Adam for the rest, or AdamW for all",
                              flag="--optimizer")
    lr: float = doc(1e-3, "learning rate", flag="--lr")
    adam_lr: float | None = doc(None, "learning rate of the Adam side", none="lr")  # the release uses one
    betas: tuple[float, float] = doc((0.9, 0.95), "Adam betas")
    eps: float = doc(1e-8, "Adam epsilon")
    weight_decay: float = doc(0.0, "weight decay")
    momentum: float = doc(0.95, "Muon momentum (Nesterov)")
    ns_steps: int = doc(5, "Newton-Schulz iterations of Muon")
    # same results as the per-parameter loop
    foreach: bool = doc(True, "batched Muon / multi-tensor Adam and AdamW step")
    schedule: Schedule = doc("constant", "learning-rate schedule", flag="--schedule")
    warmup_steps: int = doc(0, "linear warm-up steps", flag="--warmup-steps")
    min_lr_ratio: float = doc(0.0, "cosine floor, as a fraction of the learning rate")
    grad_clip: float | None = doc(None, "clip the gradient norm to this", flag="--grad-clip", none="off")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_choices(self, "optim")
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.adam_lr is None or self.adam_lr > 0, "optim.adam_lr", self.adam_lr, "> 0 or None")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
               "two numbers in [0, 1)")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        _check(self.ns_steps >= 1, "optim.ns_steps", self.ns_steps, ">= 1")
        _check(isinstance(self.foreach, bool), "optim.foreach", self.foreach, "true or false")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "> 0 or None")


@dataclass
class EMAConfig:
    """EDM-style half-lives in kimg (spec section 6) and/or constant decays, kept side by side."""

    halflives_kimg: list[float] = doc(factory=lambda: [500.0, 1000.0, 2000.0], flag="--ema-halflives",
                                      help="comma-separated half-lives in kimg, e.g. 500,1000,2000")
    decays: list[float] = doc(factory=list, help="comma-separated constant decays, e.g. 0.99,0.999")
    rampup: float = doc(0.05, "EMA ramp-up ratio of the half-lives")

    def __post_init__(self) -> None:
        self.halflives_kimg, self.decays = [float(v) for v in self.halflives_kimg], [float(v) for v in self.decays]
        _check(all(h > 0 for h in self.halflives_kimg), "ema.halflives_kimg", self.halflives_kimg, "positive")
        _check(all(0 <= d < 1 for d in self.decays), "ema.decays", self.decays, "in [0, 1)")


@dataclass
class SampleConfig:
    """The fixed noises and classes drawn every ``every`` steps so that the same samples can be watched."""

    every: int = doc(1000, "steps between sample grids, 0: none")
    count: int = doc(64, "images in each sample grid")
    seed: int = doc(0, "seed of the grid's noises and classes")
    omega: float = doc(1.0, "guidance scale of the grids, recorded as the checkpoint's sampling setting")
    t_min: float = doc(0.0, "start of the guidance interval of the grids")
    t_max: float = doc(1.0, "end of the guidance interval of the grids")

    def __post_init__(self) -> None:
        _check(self.every >= 0, "sample.every", self.every, ">= 0 (0 turns grids off)")
        _check(self.count >= 1, "sample.count", self.count, ">= 1")
        check_guidance(self.omega, self.t_min, self.t_max,
                       names={k: f"sample.{k}" for k in ("omega", "t_min", "t_max")})  # the sampler's own rule


@dataclass
class TrainConfig:
    """Everything one training run needs; ``batch_size`` is the global batch over all processes. The command
    line's ``pmf train`` flags are generated from these fields (``doc``: help and spelling)."""

    arch: str = doc("pMF-Tiny/4", f"model preset, one of {', '.join(PRESETS)}")
    model_overrides: dict = doc(factory=dict, help="model config fields as JSON, e.g. '{\"depth\": 6}'")
    data: str = doc("mnist-5k", "built-in name (mnist-5k, digits), image folder (class sub-folders, or loose "
                    "images: one class), .pmfpack folder (see `pmf pack`), .npz/.npy file, or a datasets split: "
                    "hf:OWNER/NAME[:split=,image=,label=,config=,streaming] or a local parquet / save_to_disk path")
    batch_size: int = doc(64, "global batch over all processes")
    grad_accum: int = doc(1, "gradient accumulation: each process's batch runs as this many equal micro-batches "
                          "whose gradients add up to the batch's before the one optimiser step (same result, less "
                          "memory)", flag="--grad-accum")
    steps: int = doc(1000, "training steps")
    seed: int = doc(0, "random seed of weights, data order and draws")
    loss: LossConfig = doc(factory=LossConfig, help="the pMF objective (spec section 3)")
    optim: OptimConfig = doc(factory=OptimConfig, help="optimiser")
    ema: EMAConfig = doc(factory=EMAConfig, help="EMAs of the weights")
    sample: SampleConfig = doc(factory=SampleConfig, help="sample grids during training")
    perceptual: PerceptualConfig | None = doc(None, "perceptual losses (need pixel-meanflow[perceptual])",
                                              none="off")
    objective: Objective = doc("pmf", "pmf: the pMF loss on --data; fd: FD-loss post-training of --init's one-step "
                               "sampler (docs/posttraining.md)", flag="--objective")
    fd: FDConfig = doc(factory=FDConfig, help="FD-loss post-training (with --objective fd)")
    out: str = doc("runs/pmf", "run folder: checkpoints, metrics.jsonl, samples")
    log_every: int = doc(50, "steps between metrics lines")
    wandb: str | None = doc(None, "also log to Weights & Biases in this project: the scalars, sample grids and "
                            "config (needs pixel-meanflow[wandb]; WANDB_MODE=offline logs without network)",
                            flag="--wandb", none="off")
    ckpt_every: int = doc(1000, "steps between checkpoints")
    keep_last: int = doc(3, "checkpoints kept")
    precision: Precision = doc("fp32", "bf16: autocast on GPU")
    compile: bool = doc(False, "torch.compile the network")
    grad_checkpointing: bool = doc(False, "activation checkpointing")
    num_workers: int = doc(4, "decoding processes for unpacked image folders", flag="--workers",
                           old=("--num-workers",))
    device: str | None = doc(None, "cpu, cuda, cuda:1, mps, or none: cuda when a GPU is visible, else cpu",
                             none="cuda when a GPU is visible, else cpu")
    parallel: ParallelMode = doc(
        "ddp", "under torchrun: ddp (every process holds the whole model), fsdp (FSDP2: parameters, gradients, "
        "optimiser state and EMAs sharded over all processes) or hsdp (sharded within groups of --shard-size "
        "processes, replicated across groups)")
    shard_size: int | None = doc(None, "hsdp: processes per shard group", none="the processes per node")
    async_checkpoint: bool = doc(False, "fsdp/hsdp: write the sharded checkpoints in the background")
    reduce: ReduceMode = doc(
        "auto", "how processes average gradients: ordered (every element summed in rank order, so ddp, fsdp and "
        "hsdp runs agree to the bit in the reduction), native (the backend's collectives) or auto (ordered on "
        "CPU processes / gloo, native on NCCL)")
    # starting weights (pmf.training.finetune): a checkpoint pmf.load_checkpoint reads; None: a fresh model
    init: str | None = doc(None, "start from this checkpoint's weights (a run folder, training checkpoint, export, "
                           "release .pt, .safetensors or hf:OWNER/REPO/FILE): fresh optimiser, step 0, EMAs from "
                           "these weights; the architecture is the checkpoint's unless --arch is given",
                           none="a fresh model")
    init_ema: str | None = doc(None, "which weights of --init, as --ema of pmf sample: an EMA name (hl1000, d0.99) "
                               "or 'raw'", flag="--ema", none="its sampling EMA", old=("--init-ema",))
    init_v_head: VHeadInit = doc("copy", "a checkpoint without v-head: copy the u-head's blocks into it, or start "
                                 "it fresh")
    class_map: dict = doc(factory=dict, help="NEW=OLD,... (class names or numbers): class rows of --init to keep "
                          "for the data's classes (default: matching names, else the table when the counts agree)",
                          parse=lambda text: parse_class_map(text))

    def __post_init__(self) -> None:
        for name, cls in (("loss", LossConfig), ("optim", OptimConfig), ("ema", EMAConfig), ("sample", SampleConfig),
                          ("fd", FDConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, dataclass_from_dict(cls, value, name))
        if isinstance(self.perceptual, dict):  # the form of config.json files
            self.perceptual = PerceptualConfig.from_dict(self.perceptual)
        if self.arch not in PRESETS:
            raise PMFError(f"unknown architecture {self.arch!r}; known presets: {', '.join(PRESETS)}")
        check_choices(self)
        for name in ("batch_size", "steps", "grad_accum"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, getattr(self, name),
                   "a positive integer")
        for name in ("log_every", "ckpt_every", "keep_last"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.batch_size % self.grad_accum == 0, "grad_accum", self.grad_accum,
               f"a divisor of batch_size {self.batch_size}")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _check(not (self.class_map or self.init_ema) or self.init is not None, "init", self.init,
               "a checkpoint with class_map or init_ema (they apply to init)")
        _check(self.shard_size is None or (isinstance(self.shard_size, int) and self.shard_size >= 1), "shard_size",
               self.shard_size, "None or a positive integer")
        # forward-mode AD (torch.autograd.forward_ad) fails inside FSDP2's custom autograd functions
        _check(not (self.parallel != "ddp" and self.loss.jvp == "fused"), "loss.jvp", self.loss.jvp,
               "None, 'inline' or 'split' with parallel 'fsdp' or 'hsdp' (the fused form does not run under FSDP2)")
        # the backward recomputation runs outside forward-mode AD, so it cannot rebuild the dual pass
        _check(not (self.grad_checkpointing and self.loss.jvp == "fused"), "loss.jvp", self.loss.jvp,
               "None, 'inline' or 'split' with grad_checkpointing")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return dataclass_from_dict(cls, data, "TrainConfig")
