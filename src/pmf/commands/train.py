"""``pmf train``: train pMF from a recipe (released ImageNet recipes or CPU recipes), a saved config, or
flags; runs as one process or under ``torchrun`` (DDP, FSDP2 or HSDP, ``--parallel``)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from ..errors import PMFError
from ..train_config import RECIPES, TrainConfig, recipe
from ._args import add_progress, check_device, output_folder
from ._config_flags import add_config_flags, apply_config_flags, flag_value
from ._runs import guard_run_folder


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a pMF model (CPU, one GPU, or torchrun with many GPUs)",
                       description="Train pMF. Start from --recipe (default 'mnist'), lay the fields of --config "
                       "FILE over it, then the flags. Under torchrun, --batch-size is the global batch. Every "
                       "field of the training config has a flag; a field that may be none takes 'none'.")
    p.add_argument("--recipe", default=None, help=f"one of: {', '.join(RECIPES)} (default mnist; fd with --objective "
                   "fd)")
    p.add_argument("--config", default=None, help="a JSON file of config fields, e.g. the config.json written by "
                   "an earlier run; its fields replace the recipe's")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model (default: found in the data)")
    p.add_argument("--channels", type=int, default=None, help="image channels of the model (default: 3 for RGB "
                   "data, 1 for a folder of gray images, the preset's for other gray data, which is repeated to RGB "
                   "for an RGB model)")
    p.add_argument("--image-size", type=int, default=None, help="image size of the model (default: the data's "
                   "when all images have one size, else the preset's; images are center-cropped to it)")
    add_progress(p)
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint of --out), a run folder or a file")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a run folder that has checkpoints "
                   "(deletes its checkpoints, metrics, samples and summary)")
    # the defaults shown are the default recipe's; another recipe brings its own
    add_config_flags(p, TrainConfig, recipe("mnist"), lambda text: f"the recipe's; mnist: {text}")
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
    # --objective fd without a recipe starts from the FD post-training recipe, not from pMF training's
    data = recipe(args.recipe or ("fd" if flag_value(args, "objective") == "fd" else "mnist")).to_dict()
    if args.config:
        data = merged(data, read_config_file(args.config))
    return TrainConfig.from_dict(apply_config_flags(data, TrainConfig, args))


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


@contextlib.contextmanager
def stop_after_step():
    """The first Ctrl-C asks the training loop to stop after the running step and save a checkpoint; a second
    one stops at once. Under torchrun (or off the main thread) Ctrl-C keeps its default effect."""
    from .. import train as T

    if os.environ.get("WORLD_SIZE", "1") != "1" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if T.stop_requested.is_set():
            raise KeyboardInterrupt
        T.stop_requested.set()
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    T.stop_requested.clear()
    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        T.stop_requested.clear()


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues this run: the original one with ``--resume auto`` (and without
    ``--overwrite``, which would delete the run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not (a.startswith("--resume=") or a == "--overwrite"):
            kept.append(a)
    return shlex.join(["pmf", *kept, "--resume", "auto"])


def report_interrupt(stop: KeyboardInterrupt, cfg: TrainConfig, argv: list[str] | None) -> None:
    from ..checkpoint import latest_checkpoint

    ckpt = getattr(stop, "checkpoint", None) or latest_checkpoint(Path(cfg.out) / "checkpoints")
    where = f"at step {stop.step}" if hasattr(stop, "step") else "mid-step"
    if ckpt is None:
        print(f"pmf train: interrupted {where}; no checkpoint was saved yet, so there is nothing to resume",
              file=sys.stderr)
        return
    # a run started with --init continues from its own config (which names the init) without --init
    again = shlex.join(["pmf", "train", "--config", str(Path(cfg.out) / "config.json"), "--resume", "auto"]) \
        if cfg.init else resume_command(argv)
    print(f"pmf train: interrupted {where}; the last checkpoint is {ckpt}\nresume with: {again}",
          file=sys.stderr, flush=True)


def fit_model_to_data(cfg: TrainConfig, args) -> str:
    """Set ``cfg.model_overrides`` so that the model has the data's classes, channels and image size (or those
    of --num-classes / --channels / --image-size) where the preset differs; returns what was found."""
    from ..config import model_config
    from ..data.probe import probe

    facts = probe(cfg.data)
    if cfg.init:  # the architecture of the starting weights (checked against --arch when given)
        from ..finetune import init_architecture, init_source

        source = init_source(cfg.init, cfg.init_ema).model.config
        cfg.arch, cfg.model_overrides = init_architecture(source, flag_value(args, "arch"))
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    for flag in ("num_classes", "channels", "image_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise PMFError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    want = {"num_classes": args.num_classes or facts.classes}
    if args.channels is not None:
        want["in_channels"] = args.channels
    elif facts.channels != mcfg.in_channels and not (facts.channels == 1 and mcfg.in_channels == 3
                                                      and facts.kind != "folder"):
        want["in_channels"] = facts.channels
    size = args.image_size or facts.size
    if size is not None and size != mcfg.input_size:
        if size % mcfg.patch_size:
            source = "--image-size" if args.image_size else f"the data's images are {size}x{size}:"
            raise PMFError(f"{source} {size} is not a multiple of the patch size {mcfg.patch_size} of {cfg.arch}; "
                           f"pass --image-size with a multiple of {mcfg.patch_size} (images are center-cropped "
                           "to it), or pick another --arch")
        want["input_size"] = size
    changed = {k: v for k, v in want.items() if getattr(mcfg, k) != v}
    cfg.model_overrides = {**cfg.model_overrides, **changed}
    model = f"model {cfg.arch}" + (f" with {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")
    return f"data {facts.describe()}; {model}"


def run(args) -> int:
    from ..distributed import cleanup
    from ..train import CheckpointSaveError, train

    cfg = config_from_args(args)
    if cfg.device is not None:
        check_device(cfg.device)
    output_folder(cfg.out)  # a one-line error for a file or a folder that cannot be made
    if flag_value(args, "init") is not None and args.resume not in (None, "", "none"):
        raise PMFError("--init starts a new run from weights and --resume continues a run: pick one")
    guard_run_folder(cfg.out, resume=args.resume, overwrite=args.overwrite)
    found = fit_model_to_data(cfg, args)
    if os.environ.get("RANK", "0") == "0":
        print(found, file=sys.stderr, flush=True)  # stdout carries only the JSON summary
    try:
        with stop_after_step():
            summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt as stop:
        report_interrupt(stop, cfg, getattr(args, "argv", None))
        return 130
    except CheckpointSaveError as err:
        resume = f"; resume with: {resume_command(getattr(args, 'argv', None))}" if err.intact else ""
        raise PMFError(f"{err}{resume}") from None
    finally:
        cleanup()
    print(json.dumps(summary, indent=2))
    return 0
