"""The config of a resumed ``pmf train``: the run's own, as its checkpoint records it, so that the run's record
(``config.json``, the step's JSON) never disagrees with what ran. Flags and ``--config`` fields that contradict
it are refused, each named; only the fields that leave the trained weights alone (``MAY_CHANGE``) take the
values given. ``--recipe`` is a base for new runs and is not compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import PMFError
from ..folder_layout import RunFolder
from ..training.config import TrainConfig
from ._config_flags import NONE, OFF, PREFIX, leaves

# fields a resume may change: the length of the run and how it runs, not the steps it takes (any process layout
# resumes into any other, see docs/parallel.md)
# (grad_accum: micro-batches compute the batch's gradient, equal within float rounding; wandb: logging only)
MAY_CHANGE = ("steps", "out", "log_every", "ckpt_every", "keep_last", "num_workers", "device", "compile",
              "grad_checkpointing", "parallel", "shard_size", "reduce", "async_checkpoint", "sample.every",
              "grad_accum", "wandb")
# --num-classes / --channels / --image-size: their model config field
MODEL_FLAGS = {"num_classes": "num_classes", "channels": "in_channels", "image_size": "input_size"}


def recorded_config(path: Path) -> dict | None:
    """The training config a checkpoint (file or sharded folder) records; None if it records none."""
    from ..checkpoints.schema import recorded_train_config

    return recorded_train_config(path)


def given_paths(args, config_file: dict | None) -> set[str]:
    """The config fields the command line set: by a flag, by ``--no-SECTION``, or in the ``--config`` file."""
    given = {dest.removeprefix(PREFIX) for dest, v in vars(args).items() if dest.startswith(PREFIX) and v is not None}
    given |= {dest.removeprefix(OFF) for dest, v in vars(args).items() if dest.startswith(OFF) and v}
    for leaf in leaves(TrainConfig):
        node = config_file or {}
        for part in leaf.path:
            node = node.get(part, NONE) if isinstance(node, dict) else NONE
        if node is not NONE:
            given.add(".".join(leaf.path))
    given |= {k for k, v in (config_file or {}).items() if v is None}  # a section turned off
    return given


def value(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def agrees(path: str, given, recorded) -> bool:
    """Whether a given field agrees with the run's record. The recorded model overrides also hold what
    ``pmf train`` fitted to the data (classes, channels, size), so the overrides given must only be among them."""
    if path == "model_overrides" and isinstance(given, dict) and isinstance(recorded, dict):
        return all(k in recorded and recorded[k] == v for k, v in given.items())
    return given == recorded


def flag_of(path: str) -> str:
    leaf = next((leaf for leaf in leaves(TrainConfig) if ".".join(leaf.path) == path), None)
    return leaf.flag if leaf is not None else f"--no-{path}"


def resumed_config(asked: TrainConfig, recorded: dict, given: set[str], args, where: Path) -> TrainConfig:
    """The run's config (``recorded``) with the fields of ``MAY_CHANGE`` that were ``given`` taken from
    ``asked``; a PMFError naming every given field that contradicts the record."""
    run = TrainConfig.from_dict(recorded)
    want, have = asked.to_dict(), run.to_dict()
    wrong = [f"{flag_of(p)} {json.dumps(value(want, p))} (the run has {json.dumps(value(have, p))})"
             for p in sorted(given) if p not in MAY_CHANGE and not agrees(p, value(want, p), value(have, p))]
    wrong += model_flag_conflicts(run, args)
    if "steps" in given and asked.steps != run.steps and run.optim.schedule == "cosine":
        wrong.append(f"--steps {asked.steps} (the run's cosine schedule spans {run.steps} steps; another length "
                     "changes the learning rates already used)")
    if wrong:
        raise PMFError(f"resuming {where} continues the run with its own config "
                       f"({RunFolder.of_checkpoint(where).config})"
                       f"; these contradict it: {'; '.join(wrong)}. Drop them, or start a new run with --init")
    data = run.to_dict()
    for p in MAY_CHANGE:
        if p in given or p == "out":
            *head, name = p.split(".")
            node = data
            for part in head:
                node = node[part]
            node[name] = value(want, p)
    return TrainConfig.from_dict(data)


def model_flag_conflicts(run: TrainConfig, args) -> list[str]:
    from ..model_configs import model_config

    mcfg = model_config(run.arch, **run.model_overrides)
    out = []
    for flag, field in MODEL_FLAGS.items():
        given = getattr(args, flag, None)
        if given is not None and given != getattr(mcfg, field):
            out.append(f"--{flag.replace('_', '-')} {given} (the run has {getattr(mcfg, field)})")
    return out


def config_to_resume(asked: TrainConfig, args, config_file: dict | None) -> tuple[TrainConfig, Path | None]:
    """(the config to run, the checkpoint resumed or None): ``asked`` for a new run (no --resume, or --resume
    auto in a folder without checkpoints), else the run's own config per ``resumed_config``."""
    from ..training.build import resolve_resume

    path = resolve_resume(args.resume, RunFolder(asked.out).checkpoints)
    recorded = recorded_config(path) if path is not None and path.exists() else None
    if recorded is None:
        return asked, None
    try:
        TrainConfig.from_dict(recorded)
    except PMFError as err:  # a run of an older version: its record does not read; the command's config runs
        print(f"pmf train: note: the config {path} records does not read in this version ({err}); resuming with "
              "the command's config, which becomes the run's record", file=sys.stderr, flush=True)
        return asked, None
    return resumed_config(asked, recorded, given_paths(args, config_file), args, path), path
