"""``pmf pack``: decode an image folder once into a memory-mapped .pmfpack folder for fast training."""

from __future__ import annotations

import argparse

from ._args import add_out, add_progress, add_workers, legacy_positionals
from ._config_flags import add_option_flags
from ._run_options import PackOptions


def add_parser(sub) -> None:
    p = sub.add_parser("pack", help="preprocess an image folder (ImageNet layout) or a datasets split into a packed "
                       "uint8 array",
                       description="ADM center crop to --size, RGB conversion (gray for a folder of gray "
                       "images), uint8 [N, H, W, 3 or 1] images.npy "
                       "(memory-mapped at training time), labels.npy and meta.json. Unreadable files are skipped "
                       "and counted.")
    p.add_argument("folder", help="image folder with one sub-folder per class (or loose images: one class), or a "
                   "datasets split: hf:OWNER/NAME[:split=...,image=...,label=...] or a local parquet / save_to_disk "
                   "path")
    add_out(p, help="output folder (.pmfpack is appended if missing; required)")
    add_option_flags(p, PackOptions)
    add_workers(p, help="decoding processes (default min(8, CPUs))")
    add_progress(p)
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)  # the old form `pmf pack FOLDER OUT`
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.folder import left_out
    from ..data.packed import pack_folder

    opts = PackOptions.from_args(args)  # the ranges, before anything is read or written
    legacy_positionals(args, ("out",))
    stats = pack_folder(args.folder, args.out, opts.size, workers=args.workers, progress=not args.no_progress)
    gray = " (gray: one channel, as training on the folder reads it)" if stats["channels"] == 1 else ""
    print(f"packed {stats['packed']} images{gray} into {stats['out']}; skipped {stats['skipped']} unreadable "
          f"files{left_out(args.folder)}")
    for f in stats["skipped_files"][:20]:
        print(f"  skipped: {f}")
    return 0
