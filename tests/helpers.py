"""Helpers shared by the test modules (fixtures live in conftest.py, a folder's own in its conftest.py)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from pmf.nn.release import from_release_key
from pmf.training.config import EMAConfig, OptimConfig, SampleConfig, TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pmf"
# The release-produced reference data ship with the tests (tests/fixtures/official, README there);
# PMF_FIXTURES points the parity tests at another copy.
FIXTURES = Path(os.environ.get("PMF_FIXTURES", Path(__file__).resolve().parent / "fixtures" / "official"))
ARCH = "pMF-Tiny/4"  # random_model's preset
# a 2-block pMF-Tiny/4 on 8x8 single-channel images
TINY = dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, aux_head_depth=1, num_heads=2)


def tiny_config(out, **kw) -> TrainConfig:
    """A seconds-long CPU training run of the TINY model on 8x8 digits, written to ``out``."""
    base = dict(arch="pMF-Tiny/4", model_overrides=dict(TINY), data="digits", batch_size=8, steps=6, seed=3,
                optim=OptimConfig(lr=1e-2), ema=EMAConfig(halflives_kimg=[0.05], decays=[0.9]),
                sample=SampleConfig(every=3, count=10), out=str(out), log_every=1, ckpt_every=3, keep_last=5,
                device="cpu", num_workers=0)
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir) -> list[tuple[int, float, float]]:
    """(step, loss_u, loss_v) of every row of a run's metrics.jsonl."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_u"], r["loss_v"]) for r in rows]


def load_npz(path: Path) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in np.load(path).items()}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|."""
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def random_model(seed: int = 0, arch: str = ARCH, **overrides) -> torch.nn.Module:
    """A tiny pMF (``overrides``: ModelConfig fields) whose zero-initialised output layers are perturbed, so
    images depend on the noise."""
    import pmf

    with torch.random.fork_rng(devices=[]):  # the same weights whatever ran before, the caller's RNG untouched
        torch.manual_seed(seed)
        model = pmf.build_model(arch, **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def network_args(z: torch.Tensor, labels) -> tuple:
    """``PMFDiT`` inputs of a one-step pass (h = 1, omega 2 on [0.1, 0.8]) for images z [B, C, H, W]."""
    B = z.shape[0]
    return z, torch.ones(B), torch.full((B,), 2.0), torch.full((B,), 0.1), torch.full((B,), 0.8), torch.tensor(labels)


# the sampling setting a tiny training checkpoint of ``training_checkpoint`` records as its recipe's
RECIPE = {"omega": 3.0, "t_min": 0.1, "t_max": 0.8}


def perturbed(seed: int) -> torch.nn.Module:
    """The TINY model with weights perturbed by ``seed`` (so that images depend on them)."""
    import pmf
    from pmf.model_configs import model_config

    model = pmf.PMFDiT(model_config("pMF-Tiny/4", **TINY))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def training_checkpoint(run_folder, *, prediction: str = "x") -> Path:
    """A training checkpoint (no training: seconds) in ``run_folder/checkpoints``: the TINY model's raw weights
    and one EMA ``hl0.05`` (other weights), recording RECIPE as the recipe's setting and the loss's
    ``prediction`` type."""
    from pmf.checkpoints.schema import TrainingCheckpoint, save_training_checkpoint

    raw, ema = perturbed(0), perturbed(1)
    ckpt = TrainingCheckpoint(6, raw.config.to_dict(), {"arch": "pMF-Tiny/4", "sample": RECIPE,
                                                        "loss": {"prediction": prediction}},
                              model=raw.state_dict(), ema={"hl0.05": ema.state_dict()})
    return save_training_checkpoint(Path(run_folder) / "checkpoints", ckpt)


def start_serve(ckpt, *args: str):
    """``pmf serve --checkpoint ckpt ARGS`` on 127.0.0.1 in a child process (this tree's pmf on its path),
    returned as (process, base URL) once GET /health answers 200; the caller stops it."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    import pmf
    from pmf.parallel.process import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(pmf.__file__).parents[1]),
                                                                    os.environ.get("PYTHONPATH")] if p)}
    proc = subprocess.Popen([sys.executable, "-m", "pmf.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"pmf serve did not come up: {proc.communicate()[0][-2000:]}")
        time.sleep(0.5)


def end_process_group() -> None:
    """Destroy the default process group of a test's worker process, after the caller has dropped its DDP modules
    (``del ddp``). A DDP reducer freed after ``destroy_process_group`` holds the group's last reference and
    destroys it while holding the GIL, waiting for gloo's threads, one of which may need the GIL to free a finished
    collective's tensors: a deadlock at teardown, seen once under torch 2.13.0's CPU build. Collecting the
    dropped modules first leaves the group's end to ``destroy_process_group``."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.destroy_process_group()


def needs_or_skip(extra: str, module: str):
    """Import ``module`` (a package of the extra ``extra`` as pmf imports it, ``pmf.extras.needs``, or a pmf module
    that needs the extra) or skip the
    calling test module with the package's own message: the extra's install command, or, for a torchvision
    built for another torch, that mismatch and its ways out (never a failure at collection)."""
    import importlib

    import pytest

    from pmf.extras import MissingExtra, needs

    try:
        if module.startswith("pmf."):  # a module of the package says what is missing itself
            return importlib.import_module(module)
        with needs(extra, f"these tests need {module}"):
            return importlib.import_module(module)
    except MissingExtra as err:
        pytest.skip(str(err), allow_module_level=True)


def random_inception_file(path):
    """torch-fidelity's Inception with its random initialisation, saved as its weights file is."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    real_load, real_url = cls.load_state_dict, fe.load_state_dict_from_url
    cls.load_state_dict, fe.load_state_dict_from_url = (lambda self, sd, *a, **k: None), (lambda *a, **k: None)
    try:
        torch.manual_seed(0)
        net = cls("random", ["2048"])
    finally:
        cls.load_state_dict, fe.load_state_dict_from_url = real_load, real_url
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def fixture_gradients(model, keys, steps):
    """The fixture's gradients: per step, per key of net_tiny.pt (rope_freqs skipped), in torch layout."""
    g = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    out = []
    for _ in range(steps):
        grads = {}
        for key in keys:
            p = params[from_release_key(key)]
            grads[key] = torch.randn(p.shape, generator=g) * (0.01 + 0.1 * torch.rand((), generator=g))
        out.append(grads)
    return out


def written_again(pattern: str, *, home: str) -> list[str]:
    """``path:line: text`` of each line of src/pmf that matches the regex ``pattern``, outside the module ``home``
    (its path below src/pmf): a rule that has one home, written again elsewhere."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if rel != home and re.search(pattern, line):
                found.append(f"{rel}:{n}: {line.strip()}")
    return found


def recorded_checkpoint(path, model, **train_config) -> Path:
    """A training-format checkpoint of ``model``'s weights (EMA d0.9 = the raw weights) recording ``train_config``
    (arch pMF-Tiny/4 and the recipe setting omega 2 on [0.1, 0.9] unless given; ``class_names`` goes beside it)."""
    names = train_config.pop("class_names", None)
    sd = model.state_dict()
    record = {"arch": "pMF-Tiny/4", "sample": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}, **train_config}
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": record, **({"class_names": names} if names else {})}, path)
    return Path(path)


# ---- spawned process groups (tests/parallel/) ----------------------------------------------------------------
def launcher_env(rank: int, world: int, port: int) -> None:
    """torchrun's environment for ``rank`` of ``world`` on 127.0.0.1:``port``, and one torch thread: the start
    of a test's worker process."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def rel_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (Frobenius norms, float64)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def ema_names(path) -> list[str]:
    """The EMA names of a training checkpoint: a sharded (DCP) folder or a single file."""
    from pmf.checkpoints.load import read_file
    from pmf.checkpoints.sharded import read_meta

    return read_meta(path)["emas"] if path.is_dir() else list(read_file(path)["ema"])


# ---- pmf serve (tests/serve/) ----------------------------------------------------------------------------------
SERVE_SETTING = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}  # the serve tests' checkpoint's recipe sampling setting


def serve_args(ckpt, *extra):
    from pmf.cli import build_parser

    return build_parser().parse_args(["serve", "--checkpoint", str(ckpt), *extra])


def sample_reference(model, classes, seed, *, omega=2.0, t_min=0.1, t_max=0.9, steps=1):
    """What pmf sample computes for these classes (one batch, as `pmf sample` with <= 64 images)."""
    from pmf.sampling import generate

    return np.concatenate([b.numpy() for _, b in generate(
        model, range(len(classes)), torch.tensor(classes), seed=seed, steps=steps, omega=omega, t_min=t_min,
        t_max=t_max, progress=False)])


def npz_body(resp) -> dict:
    """The arrays of an HTTP response's .npz body (status 200 asserted)."""
    import io

    assert resp.status_code == 200, resp.text
    return dict(np.load(io.BytesIO(resp.content)))


# ---- perceptual loss (tests/perceptual/) -----------------------------------------------------------------------
PERCEPTUAL_CROP = 32  # wiring tests; the LPIPS parity tests use a crop of 64
ATTO = "convnextv2_atto"


def perceptual_loss(**overrides):
    """A ``PerceptualLoss`` on random networks: both terms, ConvNeXt-V2-Atto, crops of PERCEPTUAL_CROP."""
    import warnings

    from pmf.perceptual import PerceptualConfig, build_perceptual

    cfg = dict(lpips=True, convnext=True, convnext_model=ATTO, crop_size=PERCEPTUAL_CROP) | overrides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_perceptual(PerceptualConfig(**cfg), "cpu", random_init=True)


def random_images(B, C, H, seed=0):
    """B random C x H x H images in [-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, H, generator=g) * 2 - 1
