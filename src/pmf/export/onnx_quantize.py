"""int8 ONNX files (``pmf export --out FILE.onnx --quantize int8``): onnxruntime's dynamic quantisation of the fp32
export of ``pmf.export.onnx_export``. Every linear map (MatMul, and the embedders' Gemm) gets int8 weights (one scale
per output channel) and quantises its activations per call; the norms, RoPE, attention and the sampler's
arithmetic stay in float32. Only those: onnxruntime's default would also turn the opset-23 ``Attention`` node
into com.microsoft's ``QAttention``, which takes other inputs, and the file would not load.

The images change, so the export measures by how much: both files sample the same probe images (per-image seeds,
the file's setting, the classes in turn) and the error in uint8 levels against the fp32 file is printed and
recorded in the file (``pmf.weights``), where ``pmf sample`` and ``pmf serve`` print it again. Whether it is
worth it depends on the CPU (docs/deploy.md has the measured speed and error)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..extras import needs
from ..sampling import image_noise, to_uint8
from .onnx_export import WEIGHTS_KEY, export_onnx
from .onnx_runtime import OnnxGenerator

METHOD = "onnxruntime dynamic quantisation: int8 linear weights per output channel, activations per call"
PROBE_IMAGES, PROBE_SEED = 8, 0


def export_int8(loaded, out: str | os.PathLike, *, steps: int | None = None, setting=None,
                probe_images: int = PROBE_IMAGES) -> tuple[Path, dict]:
    """Write the int8 file of ``loaded`` (arguments as ``export_onnx``) and return (its path, the error it costs
    in uint8 levels: ``max_levels``, ``mean_levels`` over ``probe_images`` images, as recorded in the file)."""
    with needs("onnx", "int8 export needs onnx"):
        import onnx
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pmf-fp32-", dir=out.parent) as tmp:  # beside out: same disk
        fp32 = export_onnx(loaded, Path(tmp) / "fp32.onnx", steps=steps, setting=setting)
        quantize(fp32, out)
        error = probe_error(OnnxGenerator(fp32), OnnxGenerator(out), probe_images)
    model = onnx.load(str(out))
    weights = {"precision": "int8", "method": METHOD, "error": error}
    props = {p.key: p for p in model.metadata_props}
    if WEIGHTS_KEY in props:
        props[WEIGHTS_KEY].value = json.dumps(weights)
    else:
        model.metadata_props.add(key=WEIGHTS_KEY, value=json.dumps(weights))
    onnx.save(model, str(out))
    return out, error


def quantize(fp32: str | os.PathLike, out: str | os.PathLike) -> None:
    """The int8 graph of an fp32 export (``METHOD``); its metadata is the fp32 file's, ``pmf.weights`` aside."""
    with needs("onnx", "int8 export needs onnxruntime's quantisation tools"):
        from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])


def probe_error(reference: OnnxGenerator, other: OnnxGenerator, images: int = PROBE_IMAGES,
                seed: int = PROBE_SEED) -> dict:
    """How far ``other``'s images are from ``reference``'s in uint8 levels (as saved: clipped, rounded), on
    ``images`` images of ``seed`` (``pmf.sampling.image_noise``), the reference's setting, classes in turn."""
    cfg, s = reference.config, reference.setting
    noise = image_noise(range(images), (cfg.in_channels, cfg.input_size, cfg.input_size), seed=seed)
    labels = torch.arange(images) % cfg.num_classes
    a, b = (to_uint8(g(noise, labels, s.omega, s.t_min, s.t_max)).int() for g in (reference, other))
    levels = (a - b).abs().float()
    return {"max_levels": int(levels.max()), "mean_levels": round(levels.mean().item(), 4),
            "probe_images": images, "seed": seed}
