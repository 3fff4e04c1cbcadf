"""The README.md model card of a hub folder (``pmf.checkpoints.hub.save_pretrained``): the paper, the license, how to
sample (CLI, Python, diffusers), the sampling setting, and the FID where it is known."""

from __future__ import annotations

from ..released_models import released

PAPER = "https://arxiv.org/abs/2601.22158"


def _fid_text(config: dict) -> str:
    preset, fid = config.get("preset"), config.get("fid")
    if fid is not None:
        return f"FID-50K of these weights: **{fid:g}** (recorded at export)."
    row = released(preset)
    if row is not None:
        return (f"The released {preset} weights score FID-50K **{row.fid:g}** at the setting above "
                "(the release's table). Whether these are those weights is not recorded: measure with `pmf eval`.")
    return "FID: not measured for these weights (`pmf eval` measures it)."


def _front_matter(license: str) -> str:
    return f"""---
license: {license}
library_name: pixel-meanflow
tags:
- pixel-meanflow
- pmf
- image-generation
- class-conditional
- one-step
---
"""


def _overview(config: dict, license: str) -> str:
    """The title, the paper, and what the model is: image size, classes, network."""
    cfg = config["config"]
    preset = config.get("preset") or "a custom pMF"
    names = config.get("class_names")
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "not recorded"
    classes = cfg["num_classes"]
    return f"""# {preset} (Pixel MeanFlow)

A class-conditional Pixel MeanFlow (pMF) generator: one forward pass maps noise to an image in pixel space, with
no latent autoencoder ([Lu et al., *One-step Latent-free Image Generation with Pixel Mean Flows*, arXiv
2601.22158]({PAPER})). Written by [pixel-meanflow](https://pypi.org/project/pixel-meanflow/).

- Image: {cfg['input_size']}x{cfg['input_size']}, {cfg['in_channels']} channel(s); {classes} classes
  ({shown}); noise scale {cfg['noise_scale']:g}.
- Network: pmfDiT, width {cfg['hidden_size']}, depth {cfg['depth']}, patch {cfg['patch_size']} (u-head only).
- License: {license}.
"""


def _setting_section(config: dict) -> str:
    """The sampling setting the folder records, and the FID where it is known."""
    s = config["sampling_setting"]
    interval = f"[{s['t_min']:g}, {s['t_max']:g}]"
    return f"""## Sampling setting

Guidance scale omega {s['omega']:g} on the interval {interval}, {s['steps']} step(s), EMA {s.get('ema') or 'n/a'}
({s.get('source', '')}). Guidance is an input of the network: no extra unconditional pass.

{_fid_text(config)}
"""


# How to sample a hub folder: the same for every model.
USAGE = """## How to sample

Command line (`pip install pixel-meanflow`; `[hub]` for a hub repo):

```bash
pmf sample --checkpoint THIS_FOLDER --classes 0,1,2 --per-class 4 --seed 0 --out samples
```

Python:

```python
import pmf
from pmf.sampling import image_noise, sample

loaded = pmf.load_checkpoint("THIS_FOLDER")  # or pmf.PMFDiT.from_pretrained("OWNER/REPO") for the network
s, cfg = loaded.setting, loaded.model.config
noise = image_noise(range(3), (cfg.in_channels, cfg.input_size, cfg.input_size), seed=0,
                    noise_scale=cfg.noise_scale)
images = sample(loaded.model, noise, [0, 1, 2], steps=s.steps, omega=s.omega, t_min=s.t_min,
                t_max=s.t_max)  # in [-1, 1]
```

diffusers (`pip install 'pixel-meanflow[diffusers]'`):

```python
from pmf.diffusers import PixelMeanFlowPipeline

pipe = PixelMeanFlowPipeline.from_pretrained("THIS_FOLDER")
images = pipe(class_labels=[0, 1, 2]).images  # PIL images at the setting above
```

ONNX: `pmf export --checkpoint THIS_FOLDER --out generator.onnx`, then `pmf sample --checkpoint generator.onnx`.
"""


def model_card(config: dict, *, license: str = "mit") -> str:
    """The card's text for a hub folder's ``config`` (the dict written to config.json)."""
    return "\n".join([_front_matter(license), _overview(config, license), _setting_section(config), USAGE])
