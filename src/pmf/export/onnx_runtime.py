"""A generator exported by ``pmf.export.onnx_export`` run in onnxruntime: no torch model in memory. It stands in for
the network where ``pmf sample`` and ``pmf serve`` take one (``config``, and ``sample_unit_noise``, which
``pmf.sampling.sample_from`` calls instead of the network)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.files import is_onnx  # noqa: F401  (the commands import it from here)
from ..checkpoints.metadata import FP32, CarriesMetadata, ModelMetadata
from ..errors import CheckpointError, PMFError
from ..extras import needs
from ..model_configs import ModelConfig
from ..sampling_setting import SamplingSetting
from .onnx_export import DATA_KEY, INPUTS, META, WEIGHTS_KEY

ORT_FLOOR = "1.23"  # the first that runs opset 23 (pmf.export.onnx_export.OPSET)



def read_metadata(path: str | os.PathLike) -> dict:
    """The ``pmf.*`` metadata of an exported file, decoded (keys as in ``pmf.export.onnx_export.META``)."""
    with needs("onnx", "reading an ONNX file needs onnx"):
        import onnx
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as err:
        raise CheckpointError(f"{str(path)!r} is not a readable ONNX file ({str(err)[:200]})") from None
    missing = [v for v in META.values() if v not in props]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks the metadata of `pmf export` ({', '.join(missing)}); "
                              "export it again with pmf export --out FILE.onnx")
    return {**{k: json.loads(props[v]) for k, v in META.items()},
            "weights": json.loads(props[WEIGHTS_KEY]) if WEIGHTS_KEY in props else dict(FP32),
            "data": json.loads(props[DATA_KEY]) if DATA_KEY in props else None}


class OnnxGenerator(CarriesMetadata):
    """An exported generator: ``(unit noise, labels, omega, t_min, t_max)`` -> images in [-1, 1] (torch, CPU);
    ``meta``: its ``ModelMetadata``, read from the file's metadata."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        with needs("onnx", "running an ONNX file needs onnxruntime"):
            import onnxruntime as ort
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ONNX file not found: {str(path)!r}")
        meta = read_metadata(path)
        self.path = path
        self.steps, self.noise_scale = int(meta["steps"]), float(meta["noise_scale"])
        self.config = ModelConfig.from_dict({**meta["model_config"], "noise_scale": self.noise_scale})
        # weights: {"precision": "fp32"}, or int8 with its error (pmf.export.onnx_quantize)
        self.meta = ModelMetadata.resolve(self.config.num_classes, setting=SamplingSetting.from_dict(meta["setting"]),
                                          preset=meta["preset"], data=meta["data"], recorded=meta["class_names"],
                                          weights=meta["weights"])
        self.class_names: list[str] | None = meta["class_names"]  # as the file records them
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own (pybind) error types
            if "opset" not in str(err).lower():
                raise
            raise PMFError(f"onnxruntime {ort.__version__} cannot run {path.name} (exported at opset "
                           f"{_opset(path)}): pip install 'onnxruntime>={ORT_FLOOR}'") from None

    @property
    def weights(self) -> dict:
        return self.meta.weights

    def __call__(self, noise, labels, omega, t_min, t_max) -> torch.Tensor:
        """Images [B, C, H, W] from unit noise [B, C, H, W] and per-image labels, omega and interval [B]."""
        feed = {"noise": np.ascontiguousarray(_numpy(noise), dtype=np.float32),
                "labels": np.ascontiguousarray(_numpy(labels), dtype=np.int64)}
        batch = feed["noise"].shape[0]
        for name, value in zip(INPUTS[2:], (omega, t_min, t_max)):
            feed[name] = np.ascontiguousarray(np.broadcast_to(_numpy(value), (batch,)), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, feed)[0])

    def check_steps(self, steps: int) -> None:
        if steps != self.steps:
            raise PMFError(f"{self.path.name} holds a {self.steps}-step generator; sample it with --steps "
                           f"{self.steps}, or export another with pmf export --steps {steps}")

    def sample_unit_noise(self, noise: torch.Tensor, labels, *, steps: int, omega, t_min, t_max) -> torch.Tensor:
        """``pmf.sampling.sample`` for this file (it scales the noise itself); ``steps`` must be the graph's."""
        self.check_steps(steps)
        return self(noise, labels, omega, t_min, t_max).to(noise.device)


def _opset(path: Path) -> int | str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def onnx_checkpoint(path: str | os.PathLike, *, arch: str | None = None, ema: str | None = None,
                    compile: bool = False, cuda_graphs: bool = False, precision: str = "fp32",
                    device: str | None = None, threads: int | None = None, noise_scale: float | None = None,
                    steps: int | None = None):
    """The exported file at ``path`` as a ``pmf.checkpoints.load.LoadedCheckpoint`` whose ``model`` is an
    ``OnnxGenerator`` (CPU). The options that act on a torch model (``arch``, ``ema``, ``compile``,
    ``cuda_graphs``, a precision other than fp32, a device other than the CPU) are refused, as are a noise scale
    and a step count other than the file's; None / False: not asked. The messages name the flags of
    ``pmf sample`` / ``pmf eval`` / ``pmf serve``."""
    from ..checkpoints.load import LoadedCheckpoint

    torch_only = {"arch": arch, "ema": ema if ema != "auto" else None, "compile": compile,
                  "cuda_graphs": cuda_graphs}
    for name, value in torch_only.items():
        if value not in (None, False):
            raise PMFError(f"--{name.replace('_', '-')} applies to a torch checkpoint, not to an ONNX file "
                           "(its weights, steps and noise scale are fixed at export)")
    if precision != "fp32":
        raise PMFError("an ONNX file runs in float32: drop --precision")
    if device not in (None, "cpu"):
        raise PMFError(f"an ONNX file runs on the CPU (onnxruntime); drop --device {device}")
    gen = OnnxGenerator(path, threads=threads)
    if noise_scale is not None and noise_scale != gen.noise_scale:
        raise PMFError(f"{gen.path.name} was exported with noise scale {gen.noise_scale:g}; drop --noise-scale or "
                       "export again with it")
    if steps is not None:  # refused before any work
        gen.check_steps(steps)
    if gen.weights != FP32:
        print(f"{gen.path.name}: {describe_weights(gen.weights)}", file=sys.stderr, flush=True)
    return LoadedCheckpoint(gen, ema=gen.setting.ema, class_names=gen.class_names, meta=gen.meta)


def describe_weights(weights: dict) -> str:
    """One line on a file's weights: fp32, or a quantisation with the pixel error measured when it was made."""
    if weights == FP32:
        return "fp32 weights"
    err = weights.get("error") or {}
    measured = (f"; measured at export: up to {err['max_levels']} uint8 levels from the fp32 export, mean "
                f"{err['mean_levels']:.2f}, on {err['probe_images']} probe images" if err else "")
    return f"{weights['precision']} weights ({weights.get('method', 'quantised')}){measured}"
