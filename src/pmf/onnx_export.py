"""Export of the few-step generator (spec section 4, one or a few u-head passes) to ONNX with a dynamic batch:
(unit noise [B, C, H, W], labels [B] int64, omega [B], t_min [B], t_max [B]) -> images [B, C, H, W] on the
[-1, 1] scale (not clipped). The file's metadata records how to sample it (``pmf.onnx_runtime`` reads it)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from .errors import PMFError
from .generator_export import OneStepGenerator, example_inputs

INPUTS = ("noise", "labels", "omega", "t_min", "t_max")
OUTPUT = "images"
# metadata_props keys (values are strings; the JSON ones hold JSON)
META = {"setting": "pmf.sampling_setting", "class_names": "pmf.class_names", "preset": "pmf.preset",
        "image_size": "pmf.image_size", "channels": "pmf.channels", "num_classes": "pmf.num_classes",
        "noise_scale": "pmf.noise_scale", "steps": "pmf.steps", "model_config": "pmf.model_config"}


def onnx_metadata(loaded, *, steps: int, noise_scale: float, setting=None) -> dict[str, str]:
    """The metadata_props of an export of ``loaded`` (a ``pmf.checkpoint.LoadedCheckpoint``): the sampling
    setting (``SamplingSetting.to_dict``, with the graph's step count), class names (``pmf.serve.classes``),
    preset, image size."""
    from dataclasses import replace

    from .serve.classes import checkpoint_class_names

    cfg = loaded.model.config
    setting = replace(setting or loaded.setting, steps=steps)
    values = {"setting": setting.to_dict(), "class_names": checkpoint_class_names(loaded), "preset": loaded.arch,
              "image_size": cfg.input_size, "channels": cfg.in_channels, "num_classes": cfg.num_classes,
              "noise_scale": noise_scale, "steps": steps, "model_config": {**cfg.to_dict(), "v_head": False}}
    return {META[k]: json.dumps(v) for k, v in values.items()}


def export_onnx(loaded, out: str | os.PathLike, *, steps: int | None = None, noise_scale: float | None = None,
                setting=None, opset: int | None = None) -> Path:
    """Write the ``steps``-step generator of ``loaded`` (default: its setting's steps) as an ONNX file with a
    dynamic batch and the metadata of ``onnx_metadata``; needs ``pip install 'pixel-meanflow[onnx]'``."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise PMFError("ONNX export needs onnx and onnxscript: pip install 'pixel-meanflow[onnx]'") from None
    setting = setting or loaded.setting
    steps = setting.steps if steps is None else steps
    cfg = loaded.model.config
    noise_scale = float(cfg.noise_scale if noise_scale is None else noise_scale)
    prediction = setting.prediction
    gen = OneStepGenerator(loaded.model, noise_scale, steps=steps, prediction=prediction).float().cpu()  # a copy
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and on training mode
        program = torch.onnx.export(gen, example_inputs(cfg, 2), dynamo=True, input_names=list(INPUTS),
                                    output_names=[OUTPUT], dynamic_shapes=({0: batch},) * len(INPUTS),
                                    opset_version=opset, optimize=True, verbose=False)
    program.model.metadata_props.update(onnx_metadata(loaded, steps=steps, noise_scale=noise_scale, setting=setting))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    return out
