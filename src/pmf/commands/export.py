"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt), as safetensors, as an ONNX generator (``pmf.export.onnx_export``) or as a
Hugging Face Hub folder (``pmf.checkpoints.hub``); or rewrite a sharded (DCP) training checkpoint as one single-file
training checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import PMFError
from ..sampling_setting import sidecar_path
from ._args import add_checkpoint, add_ema, add_out, checkpoint_arg, legacy_positionals, output_file
from ._config_flags import add_option_flags
from ._options import ExportOptions

# output suffix -> format written
SUFFIXES = {".pt": "release", ".pth": "release", ".safetensors": "safetensors", ".onnx": "onnx"}
FOLDER_FORMATS = ("checkpoint", "hub")  # --format values that the suffix of --out does not tell


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a checkpoint (release .pt, .safetensors, an ONNX sampler or "
                       "a hub folder), or a sharded checkpoint folder as one training checkpoint file",
                       description="Write one EMA (or the raw weights) of --checkpoint for inference, in the format "
                       "the suffix of --out names (.pt / .pth: the release's state dict with a .sampling.json "
                       "beside it; .safetensors; .onnx: the sampler for onnxruntime) or --format hub (a folder); "
                       "docs/deploy.md")
    add_checkpoint(p, required=False, random=False, onnx=False)
    add_out(p, help="output file: .safetensors, .onnx, or .pt / .pth for the release format or --format checkpoint; "
            "a folder for --format hub (required)")
    add_ema(p)
    p.add_argument("--format", choices=[*sorted(set(SUFFIXES.values())), *FOLDER_FORMATS], default=None,
                   help="output format (default: from the suffix of --out); 'onnx': the sampler (unit noise, "
                   "labels, omega, t_min, t_max -> images in [-1, 1], dynamic batch) with its setting and class "
                   "names as metadata, for onnxruntime and pmf sample / pmf serve (docs/deploy.md); 'hub': a "
                   "Hugging Face Hub folder (config.json, model.safetensors, README.md model card) for "
                   "PMFDiT.from_pretrained and pmf.diffusers; 'checkpoint': the whole training state of a sharded "
                   "checkpoint folder (model, EMAs, optimiser, step) as one step_XXXXXXXX.pt-style file (--ema "
                   "does not apply)")
    add_option_flags(p, ExportOptions)
    # the old form `pmf export CHECKPOINT OUT`
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def missing_folders(folder: Path) -> list[Path]:
    """The folders that making ``folder`` creates, deepest first."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def run(args) -> int:
    opts = ExportOptions.from_args(args)
    legacy_positionals(args)
    target = Path(args.out).expanduser() if args.out else None
    made = [] if target is None else missing_folders(target if args.format == "hub" else target.parent)
    try:
        return export(args, opts)
    except PMFError:
        for folder in made:  # only folders this export made and left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def export(args, opts: ExportOptions) -> int:
    from ..checkpoints.load import export_ema

    args.checkpoint = checkpoint_arg(args.checkpoint)
    suffix = Path(args.out).suffix.lower()
    onnx_only = [flag for flag, value in (("--steps", opts.steps), ("--quantize", opts.quantize)) if value is not None]
    if onnx_only and "onnx" not in (args.format, SUFFIXES.get(suffix)):
        raise PMFError(f"{onnx_only[0]} applies to ONNX exports only (the other formats hold the network, not the "
                       "sampler)")
    if args.format not in FOLDER_FORMATS and suffix not in SUFFIXES:
        raise PMFError(f"cannot tell the format of {args.out!r} from its suffix {suffix or '(none)'!r}; known "
                       f"suffixes: {', '.join(f'{k} ({v})' for k, v in SUFFIXES.items())}; a folder: --format hub")
    if args.format != "hub":
        output_file(args.out)  # a folder that cannot be made is a one-line error before any work
    if args.format == "checkpoint":
        from ..checkpoints.sharded import is_sharded_checkpoint
        from ..training.state import to_single_file

        if not is_sharded_checkpoint(args.checkpoint):
            raise PMFError(f"--format checkpoint rewrites a sharded checkpoint folder; {args.checkpoint!r} is not one")
        if suffix != ".pt":
            raise PMFError(f"--format checkpoint writes a .pt file, got {args.out!r}")
        path = to_single_file(args.checkpoint, args.out)
    elif args.format == "hub":
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise PMFError(f"--format hub writes a folder; {args.out!r} is a file")
        try:
            path = _export_hub(args.checkpoint, args.out, ema=args.ema)
        except OSError as err:
            raise PMFError(f"cannot write the folder {args.out!r}: {err.strerror or err}") from None
    else:
        if args.format is not None and args.format != SUFFIXES[suffix]:
            raise PMFError(f"--format {args.format} does not fit the suffix {suffix!r} (a {SUFFIXES[suffix]} file)")
        try:
            path = _export_onnx(args, opts) if SUFFIXES[suffix] == "onnx" else \
                export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
        except OSError as err:
            raise PMFError(f"cannot write {args.out!r}: {err.strerror or err}") from None
    print(f"wrote {path}" + (f" and {sidecar_path(path)} (its sampling setting and class names)"
                             if suffix in (".pt", ".pth")
                             and args.format not in ("checkpoint", "hub") else ""))
    return 0


def _export_onnx(args, opts: ExportOptions):
    from ..checkpoints.load import load_checkpoint
    from ..export.onnx_export import export_onnx

    loaded = load_checkpoint(args.checkpoint, ema=args.ema)
    # the file's setting: the checkpoint's, with the EMA exported (which --ema may choose) and the graph's steps
    setting = dataclasses.replace(loaded.setting, ema=loaded.ema, steps=opts.steps or loaded.setting.steps)
    print(f"exporting the {setting.steps}-step generator; setting: {setting.describe()}", flush=True)
    if opts.quantize is None:
        return export_onnx(loaded, args.out, steps=setting.steps, setting=setting)
    from ..export.onnx_quantize import export_int8
    from ..export.onnx_runtime import describe_weights, read_metadata

    path, _ = export_int8(loaded, args.out, steps=setting.steps, setting=setting)
    print(describe_weights(read_metadata(path)["weights"]), flush=True)  # as recorded in the file
    return path


def _export_hub(spec: str, out: str, *, ema: str | None = None) -> Path:
    """One weight set of any checkpoint (``ema`` as ``pmf export``) as a hub folder, with the checkpoint's
    sampling setting (its EMA: the one exported) and class names (those it records, else digits for the
    built-in sets and the ImageNet names for ImageNet presets: ``pmf.data.class_names``)."""
    from ..checkpoints.load import load_checkpoint
    from ..data.class_names import checkpoint_class_names

    loaded = load_checkpoint(spec, ema=ema)
    setting = dataclasses.replace(loaded.setting, ema=loaded.ema)
    return loaded.model.save_pretrained(out, meta=loaded.meta, setting=setting,
                                        class_names=checkpoint_class_names(loaded), preset=loaded.arch)
