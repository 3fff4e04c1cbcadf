"""``pmf refstats``: reference statistics of an image folder, a packed dataset, an array file or a built-in set
at a resolution with the ADM center crop, in one or more representations (``--repr``, default Inception for
FID): mu, sigma and a fixed sample of features for precision/recall, with each representation's
preprocessing recorded. Under ``torchrun`` each rank reads its own slice and the sums are all-reduced."""

from __future__ import annotations

from ..errors import PMFError
from ._args import add_batch_size, add_device, add_out, add_progress, add_workers
from ._config_flags import add_option_flags
from ._run_options import RefstatsOptions


def add_parser(sub) -> None:
    p = sub.add_parser("refstats", help="reference statistics (.npz: mu, sigma, a feature sample) of a dataset",
                       description="Statistics of an image folder, packed dataset, .npz/.npy array file, "
                       "datasets split or built-in set at --size pixels (ADM center crop) in each --repr "
                       "representation, for `pmf eval --ref`. With inception the file also has plain mu/sigma "
                       "(any FID tool reads it).")
    p.add_argument("source", help="image folder, .pmfpack folder, .npz/.npy file, built-in name, or a datasets "
                   "split: hf:OWNER/NAME[:split=test,image=COLUMN] or a local parquet / save_to_disk path")
    add_out(p, required=True, help="output .npz (required)")
    p.add_argument("--repr", default="inception", metavar="NAME[,NAME...]", help="representations (default "
                   "inception; offline, pixels, dinov2, mae, clip, siglip, convnext_v2 or a timm model name)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"], help="split of a built-in set")
    p.add_argument("--dataset", default=None, help="built-in set whose classifier the offline representation "
                   "uses (default: SOURCE when it is one, else mnist-5k)")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    p.add_argument("--repr-weights", default=None, metavar="NAME=PATH[,...]", help="local weights of a timm "
                   "representation (default: $PMF_<NAME>_WEIGHTS, then the Hugging Face and torch-hub caches)")
    add_batch_size(p, default=100, help="images per feature pass (default 100)")
    add_workers(p, default=4, help="image decoding processes (default 4)")
    add_device(p)
    add_progress(p)
    add_option_flags(p, RefstatsOptions)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch.distributed as dist

    from ..data import BUILTIN
    from ..data.sources import image_source
    from ..evaluation.reference import save_references, source_references
    from ..parallel.process import setup
    from ._args import check_device, output_file
    from ._eval_metrics import representation

    RefstatsOptions.from_args(args)  # the ranges of --size, --sample, --limit, before anything is read or written
    names = list(dict.fromkeys(n.strip() for n in args.repr.split(",") if n.strip()))
    if not names:
        raise PMFError("--repr names no representation")
    args.device = check_device(args.device)
    output_file(args.out)
    dataset = image_source(args.source, args.size, args.split)
    args.dataset = args.dataset or (args.source if args.source in BUILTIN else None)
    created = not dist.is_initialized()
    info = setup(args.device)
    created = created and dist.is_initialized()
    reps = {name: representation(name, args, info.device) for name in names}
    refs = source_references(dataset, reps, source=args.source, sample=args.sample, batch_size=args.batch_size,
                             workers=args.workers, limit=args.limit, progress=not args.no_progress, size=args.size)
    if info.rank == 0:
        n = next(iter(refs.values())).num_images
        meta = {"source": args.source, "size": args.size, "split": args.split, "num_images": n,
                "crop": "adm_center_crop"}
        if "inception" in reps:
            meta["inception_weights"] = reps["inception"].preprocessing()["weights_file"]
        out = save_references(args.out, list(refs.values()), meta)
        print(f"wrote reference statistics of {n} images at {args.size}px in {', '.join(names)} to {out}")
    if created:
        dist.destroy_process_group()
    return 0
