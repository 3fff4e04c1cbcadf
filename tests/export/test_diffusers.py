"""pmf.export.diffusers_pipeline.PixelMeanFlowPipeline: with given latents it equals pmf.sampling.sample, and it
round-trips the
hub folder of pmf export --format hub."""

import pytest
import torch

from helpers import needs_or_skip, random_model

needs_or_skip("diffusers", "pmf.export.diffusers_pipeline")

import pmf  # noqa: E402
from pmf.cli import main  # noqa: E402
from pmf.export.diffusers_pipeline import PixelMeanFlowPipeline  # noqa: E402
from pmf.sampling import image_noise, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [f"digit {i}" for i in range(9)] + ["nine, 9"]


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    model = random_model(seed=5)
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "class_names": NAMES, "train_config": {"arch": "pMF-Tiny/4",
                                                       "sample": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}}},
               folder / "ck.pt")
    assert main(["export", "--checkpoint", str(folder / "ck.pt"), "--format", "hub", "--out", str(folder / "hub")]) == 0
    return folder / "hub"


@pytest.mark.parametrize("steps", [1, 2])
def test_pipeline_equals_the_sampler(hub_dir, steps):
    pipe = PixelMeanFlowPipeline.from_pretrained(hub_dir)
    pipe.set_progress_bar_config(disable=True)
    model = pmf.load_model(hub_dir)
    noise = image_noise(range(3), (3, 32, 32), seed=steps)
    out = pipe(class_labels=[3, 1, 4], latents=noise, num_inference_steps=steps, guidance_scale=3.0,
               guidance_interval=(0.1, 0.8), output_type="pt").images
    want = sample(model, noise, torch.tensor([3, 1, 4]), steps=steps, omega=3.0, t_min=0.1, t_max=0.8)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert ((out - (want.clamp(-1, 1) + 1) / 2).abs().max()) <= 1e-4
    assert (want.abs() < 0.99).float().mean() > 0.5  # most pixels are inside the clip: the check has teeth
    # None: the model's setting (omega 2 on [0.1, 0.9])
    default = pipe(class_labels=[3, 1, 4], latents=noise, num_inference_steps=steps, output_type="pt").images
    want = sample(model, noise, torch.tensor([3, 1, 4]), steps=steps, omega=2.0, t_min=0.1, t_max=0.9)
    assert ((default - (want.clamp(-1, 1) + 1) / 2).abs().max()) <= 1e-4


def test_generator_outputs_and_labels(hub_dir):
    pipe = PixelMeanFlowPipeline.from_pretrained(hub_dir)
    pipe.set_progress_bar_config(disable=True)
    a = pipe(class_labels=[0, 9], generator=torch.Generator().manual_seed(1), output_type="np").images
    b = pipe(class_labels=[0, 9], generator=torch.Generator().manual_seed(1), output_type="np").images
    assert a.shape == (2, 32, 32, 3) and (a == b).all() and 0 <= a.min() and a.max() <= 1
    pil = pipe(class_labels=7).images
    assert len(pil) == 1 and pil[0].size == (32, 32)
    assert pipe.get_label_ids(["digit 3", "nine", "9"]) == [3, 9, 9]
    assert pipe.get_label_ids(["4", 2]) == [4, 2]  # pmf.class_choice: a number that is no name is an index
    named = pipe(class_labels=["nine", "digit 3"], generator=torch.Generator().manual_seed(1), output_type="np")
    indexed = pipe(class_labels=[9, 3], generator=torch.Generator().manual_seed(1), output_type="np")
    assert (named.images == indexed.images).all()
    with pytest.raises(pmf.PMFError, match="unknown class 'cat'"):
        pipe.get_label_ids("cat")


def test_save_pretrained_round_trips_the_hub_folder(hub_dir, tmp_path):
    pipe = PixelMeanFlowPipeline.from_pretrained(hub_dir)
    pipe.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_text() == (hub_dir / "config.json").read_text()
    again = PixelMeanFlowPipeline.from_pretrained(tmp_path / "again")
    a, b = pipe.transformer.state_dict(), again.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.transformer.setting == pipe.transformer.setting and again.transformer.config.class_names == NAMES
    # the standard diffusers layout works as well
    from diffusers import DiffusionPipeline

    DiffusionPipeline.save_pretrained(pipe, tmp_path / "layout")
    layout = PixelMeanFlowPipeline.from_pretrained(tmp_path / "layout")
    c = layout.transformer.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a) and layout.transformer.setting.omega == 2.0


def test_the_first_name_pmf_diffusers_gives_the_same_classes():
    import diffusers

    import pmf.diffusers
    from pmf.export.diffusers_pipeline import PMFTransformer2DModel

    assert pmf.diffusers.PixelMeanFlowPipeline is PixelMeanFlowPipeline
    assert pmf.diffusers.PMFTransformer2DModel is PMFTransformer2DModel
    assert diffusers.__name__ == "diffusers" and hasattr(diffusers, "DiffusionPipeline")  # not shadowed
