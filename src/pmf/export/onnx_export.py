"""Export of the few-step generator (spec section 4, one or a few u-head passes) to ONNX with a dynamic batch:
(unit noise [B, C, H, W], labels [B] int64, omega [B], t_min [B], t_max [B]) -> images [B, C, H, W] on the
[-1, 1] scale (not clipped). The file's metadata records how to sample it (``pmf.export.onnx_runtime`` reads it).

The graph is written at opset 23, where RMSNorm and attention are single nodes (``RMSNormalization``,
``Attention``), attention runs on the token layout (``pmf.nn.token_ops``: one ``RotaryEmbedding`` node per q and
k, the 3-D form of ``Attention``, no head transposes), and a SwiGLU width that is a multiple of 1024 gets zero
units (``pad_mlp_hidden``): the same numbers as the network, in fewer nodes and faster matrix products for the
runtime (docs/deploy.md has the measured effect)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ..checkpoints.metadata import FP32
from ..extras import needs
from ..nn.layers import SwiGLU
from ..nn.token_ops import onnx_translations
from .generator import OneStepGenerator, example_inputs

OPSET = 23  # the first with RMSNormalization and Attention
INPUTS = ("noise", "labels", "omega", "t_min", "t_max")
OUTPUT = "images"
# metadata_props keys (values are strings; the JSON ones hold JSON)
META = {"setting": "pmf.sampling_setting", "class_names": "pmf.class_names", "preset": "pmf.preset",
        "image_size": "pmf.image_size", "channels": "pmf.channels", "num_classes": "pmf.num_classes",
        "noise_scale": "pmf.noise_scale", "steps": "pmf.steps", "model_config": "pmf.model_config"}
# how the weights are stored: FP32 here; pmf.export.onnx_quantize records int8 and its measured error
# (optional: files exported before it was written hold fp32 weights)
WEIGHTS_KEY = "pmf.weights"
DATA_KEY = "pmf.data"  # the training data of the model's ModelMetadata (optional: absent in older files)


def onnx_metadata(loaded, *, steps: int, noise_scale: float, setting=None) -> dict[str, str]:
    """The metadata_props of an export of ``loaded`` (a ``pmf.checkpoints.load.LoadedCheckpoint``): the fields of
    its ``ModelMetadata`` (the sampling setting with the graph's step count, one name per class, preset, fp32
    weights, data), the image size, the graph's steps and noise scale, the model config."""
    from dataclasses import replace

    cfg = loaded.model.config
    meta = loaded.meta.replace(setting=replace(setting or loaded.setting, steps=steps), weights=dict(FP32))
    values = {"setting": meta.setting.to_dict(), "class_names": meta.class_names, "preset": meta.preset,
              "image_size": cfg.input_size, "channels": cfg.in_channels, "num_classes": cfg.num_classes,
              "noise_scale": noise_scale, "steps": steps, "model_config": {**cfg.to_dict(), "v_head": False}}
    return {**{META[k]: json.dumps(v) for k, v in values.items()}, WEIGHTS_KEY: json.dumps(meta.weights),
            DATA_KEY: json.dumps(meta.data)}


def export_onnx(loaded, out: str | os.PathLike, *, steps: int | None = None, noise_scale: float | None = None,
                setting=None, opset: int = OPSET) -> Path:
    """Write the ``steps``-step generator of ``loaded`` (default: its setting's steps) as an ONNX file with a
    dynamic batch and the metadata of ``onnx_metadata``; needs ``pip install 'pixel-meanflow[onnx]'``."""
    with needs("onnx", "ONNX export needs onnx and onnxscript"):
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    setting = setting or loaded.setting
    steps = setting.steps if steps is None else steps
    cfg = loaded.model.config
    noise_scale = float(cfg.noise_scale if noise_scale is None else noise_scale)
    prediction = setting.prediction
    gen = OneStepGenerator(loaded.model, noise_scale, steps=steps, prediction=prediction,
                           attention_layout="tokens").float().cpu()  # a copy
    pad_mlp_hidden(gen.net)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)  # its note that torchvision's ops are skipped where torchvision is absent
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and on training mode
            program = torch.onnx.export(gen, example_inputs(cfg, 2), dynamo=True, input_names=list(INPUTS),
                                        output_names=[OUTPUT], dynamic_shapes=({0: batch},) * len(INPUTS),
                                        opset_version=opset, optimize=True, verbose=False,
                                        custom_translation_table=onnx_translations())
    finally:
        registry.setLevel(level)
    program.model.metadata_props.update(onnx_metadata(loaded, steps=steps, noise_scale=noise_scale, setting=setting))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    return out


ALIASING_WIDTH = 1024  # floats: rows 4 KiB apart fall into the same cache sets
MLP_PAD = 16  # one 64-byte cache line of floats


def pad_mlp_hidden(net: torch.nn.Module, pad: int = MLP_PAD) -> int:
    """Give every SwiGLU of ``net`` (in place) whose hidden width is a multiple of ``ALIASING_WIDTH`` ``pad``
    more hidden units with zero weights; returns how many were padded. The outputs are the same numbers: a
    zero unit is silu(0) * 0 = 0 and meets a zero column of w2. The point is the runtime's GEMM: w2 reads its
    input with a row stride of the hidden width, and at a multiple of 4 KiB every row maps to the same cache
    sets (onnxruntime's MatMul at K = 2048, N = 768 ran at 130-180 GFLOP/s on a 2-core AMD EPYC against
    194-217 at K = 2064; docs/deploy.md)."""
    padded = 0
    for mlp in net.modules():
        if not isinstance(mlp, SwiGLU) or mlp.w2.in_features % ALIASING_WIDTH:
            continue
        hidden, dim = mlp.w1.weight.shape
        with torch.no_grad():
            for name in ("w1", "w3"):
                wider = torch.nn.Linear(dim, hidden + pad, bias=False)
                wider.weight.zero_()[:hidden] = getattr(mlp, name).weight
                setattr(mlp, name, wider.requires_grad_(False))
            wider = torch.nn.Linear(hidden + pad, dim, bias=False)
            wider.weight.zero_()[:, :hidden] = mlp.w2.weight
            mlp.w2 = wider.requires_grad_(False)
        padded += 1
    return padded
