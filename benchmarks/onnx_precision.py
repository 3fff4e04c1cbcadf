"""Lower-precision ONNX files on a CPU: the fp32 export of ``pmf export --out FILE.onnx`` against the int8 file of
``--quantize int8`` (``pmf.export.onnx_quantize``: onnxruntime's dynamic quantisation of every MatMul) and an fp16
conversion that ``pmf`` does not offer (``onnxruntime.transformers.float16``, float32 inputs and outputs kept),
all in onnxruntime: seconds per one-step call (median of ``--repeats`` alternating calls, wall clock), the pixel
error of each against the fp32 file in uint8 levels (max and mean) and the file sizes. docs/deploy.md quotes it.
A variant that onnxruntime cannot build or run is reported with its error instead of figures.

    python benchmarks/onnx_precision.py --preset pMF-B/16 --batch 4 --threads 2 \\
        --json benchmarks/results/cpu/onnx_precision_b16.json
    python benchmarks/onnx_precision.py --checkpoint runs/demo --batch 64   # trained weights
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from inference import GUIDANCE, nontrivial_model

VARIANTS = ("fp32", "int8", "fp16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pMF-B/16", help="random weights of this preset (see --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="trained weights instead: anything pmf.load_checkpoint reads")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or "fp32" not in args.variants:
        p.error(f"--variants takes fp32 (required: the reference) and any of int8, fp16; got {args.variants}")
    return args


def loaded_model(args):
    from pmf.checkpoints.load import LoadedCheckpoint, load_checkpoint
    from pmf.sampling import SamplingSetting

    if args.checkpoint:
        return load_checkpoint(args.checkpoint)
    return LoadedCheckpoint(nontrivial_model(args.preset, args.seed), args.preset, None, SamplingSetting(**GUIDANCE))


def write_variant(name: str, fp32: Path) -> Path:
    out = fp32.with_name(f"g_{name}.onnx")
    if name == "int8":  # what `pmf export --quantize int8` writes, without its own export and probe
        from pmf.export.onnx_quantize import quantize

        quantize(fp32, out)
    elif name == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    import onnxruntime

    from pmf.export.onnx_export import export_onnx
    from pmf.export.onnx_quantize import probe_error
    from pmf.export.onnx_runtime import OnnxGenerator
    from pmf.sampling import image_noise

    torch.set_num_threads(args.threads)
    loaded = loaded_model(args)
    cfg = loaded.model.config
    setting = loaded.setting
    noise = image_noise(range(args.batch), (cfg.in_channels, cfg.input_size, cfg.input_size), seed=args.seed)
    labels = torch.arange(args.batch) % cfg.num_classes
    call_args = (noise, labels, setting.omega, setting.t_min, setting.t_max)
    gens, sizes, errors = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="pmf-onnx-precision-") as folder:
        fp32 = export_onnx(loaded, Path(folder) / "g_fp32.onnx", setting=setting)
        for name in args.variants:
            try:
                path = fp32 if name == "fp32" else write_variant(name, fp32)
                sizes[name] = path.stat().st_size
                gens[name] = OnnxGenerator(path, threads=args.threads)
                gens[name](*call_args)
            except Exception as err:  # noqa: BLE001  (report the variant that onnxruntime refuses, go on)
                errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                gens.pop(name, None)
                print(f"{name}: {errors[name]}", file=sys.stderr)
    times = common.time_interleaved({k: (lambda g=g: g(*call_args)) for k, g in gens.items()}, torch.device("cpu"),
                                    warmup=args.warmup, repeats=args.repeats, clock=time.perf_counter)
    ref = gens["fp32"](*call_args)
    rows = []
    for name in args.variants:
        row = {"variant": name, "file_mib": common.mib(sizes.get(name))}
        if name in errors:
            row["error"] = errors[name]
        else:
            levels = probe_error(gens["fp32"], gens[name], args.batch, args.seed)  # the export's own measure
            row.update(seconds=round(times[name], 4), speedup_vs_fp32=round(times["fp32"] / times[name], 3),
                       max_abs_diff=(gens[name](*call_args) - ref).abs().max().item(),
                       max_levels=levels["max_levels"], mean_levels=levels["mean_levels"])
        rows.append(row)
        print(row, file=sys.stderr)
    result = {"benchmark": "onnx_precision", "weights": args.checkpoint or f"random {args.preset}",
              "preset": loaded.arch, "batch": args.batch, "threads": args.threads, "cpu": common.cpu_model(),
              "clock": "wall", "repeats": args.repeats, "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "setting": setting.to_dict(), "rows": rows}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
