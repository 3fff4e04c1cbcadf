"""``pmf train``: train pMF from a recipe (released ImageNet recipes or CPU recipes), a saved config, or
flags; runs as one process or under ``torchrun`` (DDP, FSDP2 or HSDP, ``--parallel``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import PMFError
from ..training.config import TrainConfig
from ..training.recipes import RECIPES, recipe
from ._args import add_progress, check_device, output_folder
from ._config_flags import add_config_flags, add_option_flags, apply_config_flags, flag_value, said_by_flag
from ._resume import config_to_resume
from ._run_options import ModelFitOptions
from ._runs import guard_run_folder, report_interrupt, resume_command


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a pMF model (CPU, one GPU, or torchrun with many GPUs)",
                       description="Train pMF. Start from --recipe (default 'mnist'), lay the fields of --config "
                       "FILE over it, then the flags. Under torchrun, --batch-size is the global batch. Every "
                       "field of the training config has a flag; a field that may be none takes 'none'.")
    p.add_argument("--recipe", default=None, help=f"one of: {', '.join(RECIPES)} (default mnist; fd with --objective "
                   "fd)")
    p.add_argument("--config", default=None, help="a JSON file of config fields, e.g. the config.json written by "
                   "an earlier run; its fields replace the recipe's")
    add_option_flags(p, ModelFitOptions)
    add_progress(p)
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint of --out; none: start at step 0), a "
                   "run folder or a file; the run continues with its own config (docs/training.md)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a run folder that has checkpoints "
                   "(deletes its checkpoints, metrics, samples and summary)")
    mnist = recipe("mnist")
    p.add_argument("--interval", default=None, metavar="T_MIN:T_MAX", help="guidance interval of the sample "
                   "grids, recorded as the checkpoint's sampling setting (default: the recipe's; mnist: "
                   f"{mnist.sample.t_min:g}:{mnist.sample.t_max:g})")
    # the defaults shown are the default recipe's; another recipe brings its own
    add_config_flags(p, TrainConfig, mnist, lambda text: f"the recipe's; mnist: {text}", replaced=INTERVAL)
    p.set_defaults(func=run)


def merged(base: dict, over: dict) -> dict:
    """``base`` with the fields of ``over`` laid over it, section by section."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def config_from_args(args) -> TrainConfig:
    """The recipe (default mnist, or fd with --objective fd), the fields of --config over it, then the flags
    given."""
    interval_flag(args)
    # --objective fd without a recipe starts from the FD post-training recipe, not from pMF training's
    data = recipe(args.recipe or ("fd" if flag_value(args, "objective") == "fd" else "mnist")).to_dict()
    if args.config:
        data = merged(data, read_config_file(args.config))
    try:
        return TrainConfig.from_dict(apply_config_flags(data, TrainConfig, args))
    except PMFError as err:
        raise said_by_flag(err, TrainConfig) from None


INTERVAL = {"sample.t_min": "--interval", "sample.t_max": "--interval"}  # the old --sample-t-min / --sample-t-max


def interval_flag(args) -> None:
    """--interval T_MIN:T_MAX as the grids' fields (sample.t_min, sample.t_max), as if their flags were given."""
    from ._config_flags import PREFIX
    from ._numbers import check_sampling_flags, intervals

    pairs = intervals(getattr(args, "interval", None), one=True)
    if pairs is None:
        return
    if len(pairs) != 1:
        raise PMFError(f"--interval takes one T_MIN:T_MAX pair here, got {args.interval!r}")
    check_sampling_flags(t_min=pairs[0][0], t_max=pairs[0][1])
    for field, value in zip(INTERVAL, pairs[0]):
        if getattr(args, PREFIX + field, None) is not None:
            raise PMFError(f"--interval and the old --{field.replace('.', '-').replace('_', '-')} both set "
                           f"{field}: give --interval only")
        setattr(args, PREFIX + field, value)


def read_config_file(spec: str) -> dict:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise PMFError(f"config file not found: {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise PMFError(f"--config {str(path)!r} is not JSON{where}; give a JSON object of config fields, such as "
                       "the config.json of a run folder") from None
    if not isinstance(data, dict):
        raise PMFError(f"--config {str(path)!r} holds a JSON {type(data).__name__}, not an object of config fields")
    return data


def fit_model_to_data(cfg: TrainConfig, args, resumed: Path | None = None) -> str:
    """Set ``cfg.model_overrides`` so that the model has the data's classes, channels and image size (or those
    of --num-classes / --channels / --image-size) where the preset differs; returns what was found. A resumed
    run keeps the model it records."""
    from ..data.builtin import RESIZE_RULE, resized_note
    from ..data.probe import probe
    from ..model_configs import model_config, model_fields

    facts = probe(cfg.data)
    if resumed is not None:
        return f"data {facts.describe()}; model {cfg.arch}; resuming {resumed} with the run's own config"
    note = ""
    if cfg.init:  # the architecture of the starting weights (checked against --arch when given)
        from ..training.finetune import init_architecture, init_source

        source, recipe_arch = init_source(cfg.init, cfg.init_ema).model.config, cfg.arch
        cfg.arch, cfg.model_overrides = init_architecture(source, flag_value(args, "arch"))
        if cfg.arch != recipe_arch:
            note = (f"\n--init {cfg.init} is a {cfg.arch}: its architecture replaces the recipe's {recipe_arch}; the "
                    f"recipe's other settings stay (batch {cfg.batch_size}, lr {cfg.optim.lr:g}, --steps {cfg.steps})")
    # The fields as the recipe and --model-overrides set them, before the fit: a patch that divides only the new
    # size (patch 56 at --image-size 224 on a 28 px preset) is checked against that size, not the preset's.
    given = model_fields(cfg.arch, **cfg.model_overrides)
    size = args.image_size or facts.size
    patch = given["patch_size"]
    if size is not None and size != given["input_size"] and isinstance(patch, int) and patch > 0 and size % patch:
        source = "--image-size" if args.image_size else f"the data's images are {size}x{size}:"
        how = f"{facts.spec} is brought to it by {RESIZE_RULE}" if facts.kind == "built-in" else \
            "images are center-cropped to it"
        whose = "--model-overrides" if cfg.model_overrides.get("patch_size") is not None else cfg.arch
        raise PMFError(f"{source} {size} is not a multiple of the patch size {patch} of {whose}; "
                       f"pass --image-size with a multiple of {patch} ({how}), or pick another --arch")
    mcfg = model_config(cfg.arch, **{**cfg.model_overrides, **({} if size is None else {"input_size": size})})
    want = {"num_classes": args.num_classes or facts.classes}
    if args.channels is not None:
        want["in_channels"] = args.channels
    elif facts.channels != mcfg.in_channels and not (facts.channels == 1 and mcfg.in_channels == 3
                                                      and facts.kind not in ("folder", "pack", "datasets")):
        want["in_channels"] = facts.channels
    if size is not None:
        want["input_size"] = size
    changed = {k: v for k, v in want.items() if given.get(k) != v}
    cfg.model_overrides = {**cfg.model_overrides, **changed}
    model = f"model {cfg.arch}" + (f" with {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")
    final = mcfg.input_size
    resize = f"; images {resized_note(facts.stored, final)}" if facts.stored and facts.stored < final else ""
    return f"data {facts.describe()}; {model}{resize}{note}{one_class_guidance(cfg, args, want['num_classes'])}"


def check_stream(cfg: TrainConfig) -> None:
    """A streamed ``datasets`` split that ends before the first batch stops before the run folder is touched."""
    from ..data.hf import is_hf, parse_spec

    if is_hf(cfg.data) and parse_spec(cfg.data).streaming:
        from ..data.hf_stream import HFStream

        HFStream(cfg.data, 1).check_first_batch(cfg.batch_size)


def one_class_guidance(cfg: TrainConfig, args, num_classes: int) -> str:
    """A one-class model samples without guidance unless --sample-omega says otherwise: its class and the null
    label describe the same images, so guidance has no direction to push in (docs/training.md, "Unconditional
    data"). Returns what the header line says of it."""
    if num_classes != 1 or flag_value(args, "sample.omega") is not None:
        return ""
    cfg.sample.omega, cfg.sample.t_min, cfg.sample.t_max = 1.0, 0.0, 1.0
    return "; grids and the recorded sampling setting use omega 1 (no guidance; --sample-omega sets another)"


def run(args) -> int:
    from ..parallel.process import cleanup, is_main_process, world_size
    from ..training.accumulate import check_accumulation
    from ..training.loop import CheckpointSaveError, train
    from ..training.stopping import StopRequest
    from ..training.tracking import import_wandb

    ModelFitOptions.from_args(args)  # the ranges of --num-classes, --channels, --image-size, before any work
    cfg = config_from_args(args)
    if cfg.wandb:
        import_wandb()
    cfg, resumed = config_to_resume(cfg, args, read_config_file(args.config) if args.config else None)
    check_accumulation(cfg.batch_size, world_size(), cfg.grad_accum)  # before any write
    if cfg.device is not None:
        check_device(cfg.device)
    found = fit_model_to_data(cfg, args, resumed)  # bad data stops here, before the run folder is made or cleared
    check_stream(cfg)
    output_folder(cfg.out)  # a one-line error for a file or a folder that cannot be made
    guard_run_folder(cfg.out, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        print(found, file=sys.stderr, flush=True)  # stdout carries only the JSON summary
    try:
        with StopRequest().installed() as stop:
            summary = train(cfg, resume=args.resume, progress=not args.no_progress, stop=stop)
    except KeyboardInterrupt as interrupted:
        return report_interrupt(interrupted, cfg, getattr(args, "argv", None))
    except CheckpointSaveError as err:
        resume = f"; resume with: {resume_command(getattr(args, 'argv', None))}" if err.intact else ""
        raise PMFError(f"{err}{resume}") from None
    finally:
        cleanup()
    print(json.dumps(summary, indent=2))
    return 0
