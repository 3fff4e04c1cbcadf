"""The sampling setting (pmf.sampling_setting): one validity rule used by every caller, the prediction type carried from
the training loss to the sampler, the model's own setting as the default of ``generate``, and exports that
sample exactly as the checkpoint they came from."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import pmf
from helpers import RECIPE, perturbed, training_checkpoint
from pmf.cli import main
from pmf.commands._args import check_sampling_flags as check_flags
from pmf.evaluation.evaluate import EvalSettings
from pmf.sampling import generate, image_noise, sample, to_uint8
from pmf.sampling_setting import SamplingSetting, SettingError, check_guidance, default_setting, sidecar_path
from pmf.training.config import SampleConfig

# ---- one rule ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, field", [
    (dict(omega=0.0), "omega"), (dict(omega=-1.0), "omega"), (dict(omega=float("nan")), "omega"),
    (dict(omega=float("inf")), "omega"), (dict(t_min=-0.1), "t_min"), (dict(t_max=1.5), "t_max"),
    (dict(t_min=0.9, t_max=0.1), "t_min"), (dict(steps=0), "steps"), (dict(steps=1.5), "steps"),
    (dict(prediction="v"), "prediction"), (dict(omega="2"), "omega"),
])
def test_setting_refuses_bad_fields_naming_them(fields, field):
    with pytest.raises(SettingError) as err:
        SamplingSetting(**fields)
    assert err.value.field == field and field in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, pmf.PMFError)


def test_check_guidance_judges_every_row_of_tensors():
    check_guidance(torch.tensor([0.5, 7.5]), torch.tensor([0.0, 0.2]), torch.tensor([1.0, 0.2]))
    with pytest.raises(SettingError, match="t_max must be in \\[0, 1\\], got 1.5"):
        check_guidance(torch.tensor([2.0, 2.0]), 0.0, torch.tensor([1.0, 1.5]))
    with pytest.raises(SettingError, match="got \\[0.6, 0.4\\]"):
        check_guidance(1.0, torch.tensor([0.1, 0.6]), torch.tensor([0.9, 0.4]))


def _serve_check(**fields):
    pytest.importorskip("fastapi")
    from pmf.serve.app import ModelInfo, RequestProblem, ServeLimits, _check

    info = ModelInfo(None, 8, 1, ["a", "b"], SamplingSetting(), 1.0, None)
    from pydantic import ValidationError

    try:  # the request schema states the single-field bounds (OpenAPI); _check applies the setting's rule
        _check(ServeLimits().request_model(info.class_names)(classes=[0], **fields), info)
    except RequestProblem as err:
        raise SettingError(err.field, str(err)) from None
    except ValidationError as err:
        where = err.errors()[0]["loc"][-1]
        raise SettingError(str(where), f"{where} {err.errors()[0]['msg']}") from None


CALLERS = {
    "setting": lambda o, a, b: SamplingSetting(o, a, b),
    "sampler": lambda o, a, b: sample(perturbed(0), torch.zeros(1, 1, 8, 8), torch.tensor([0]), omega=o, t_min=a,
                                      t_max=b),
    "model": lambda o, a, b: perturbed(0)(torch.zeros(2, 1, 8, 8), 1.0, torch.tensor([o, 1.0]), a, b,
                                          torch.tensor([0, 1])),
    "evaluation": lambda o, a, b: EvalSettings(setting=SamplingSetting(o, a, b)),
    "config": lambda o, a, b: SampleConfig(omega=o, t_min=a, t_max=b),
    "flags": lambda o, a, b: check_flags(omega=o, t_min=a, t_max=b),
    "server": lambda o, a, b: _serve_check(omega=o, t_min=a, t_max=b),
}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_caller_applies_the_same_rule(caller):
    """omega 0.5 on [0, 1] is valid everywhere (the config once refused omega < 1); omega 0, an interval
    beyond [0, 1] and a reversed interval are refused everywhere, each naming its field."""
    run = CALLERS[caller]
    run(0.5, 0.0, 1.0)
    for bad, field in (((0.0, 0.0, 1.0), "omega"), ((2.0, 0.0, 1.2), "t_max"), ((2.0, 0.7, 0.3), "t_min")):
        with pytest.raises(pmf.PMFError) as err:
            run(*bad)
        assert field.replace("_", "") in str(err.value).replace("_", "").replace("T_", "t").lower(), str(err.value)


# ---- the prediction type and the default setting -------------------------------------------------------------

def test_u_prediction_checkpoint_is_sampled_as_u(tmp_path):
    path = training_checkpoint(tmp_path / "run", prediction="u")
    loaded = pmf.load_checkpoint(path)
    assert loaded.setting.prediction == "u" and loaded.ema == "hl0.05"
    labels = torch.tensor([0, 3])
    got = torch.cat([b for _, b in generate(loaded, range(2), labels, seed=1, progress=False)])
    noise = image_noise(range(2), (1, 8, 8), seed=1, noise_scale=loaded.model.config.noise_scale)
    as_u = sample(loaded.model, noise, labels, **RECIPE, prediction="u")
    as_x = sample(loaded.model, noise, labels, **RECIPE, prediction="x")
    assert torch.equal(got, to_uint8(as_u)) and not torch.equal(got, to_uint8(as_x))
    assert default_setting(loaded.model.config, {"loss": {"prediction": "u"}}).prediction == "u"


def test_generate_defaults_to_the_checkpoints_setting_as_the_cli(tmp_path):
    loaded = pmf.load_checkpoint(training_checkpoint(tmp_path / "run"))
    assert (loaded.setting.omega, loaded.setting.t_min, loaded.setting.t_max) == (3.0, 0.1, 0.8)
    labels = torch.tensor([1, 2, 3])

    def images(model, **kw):
        return torch.cat([b for _, b in generate(model, range(3), labels, seed=2, progress=False, **kw)])

    own = images(loaded)
    assert torch.equal(own, images(loaded.model, setting=loaded.setting))
    assert torch.equal(own, images(loaded.model, omega=3.0, t_min=0.1, t_max=0.8))
    assert not torch.equal(own, images(loaded.model))  # a bare network knows no recipe: no guidance
    assert torch.equal(images(loaded, omega=1.0, t_min=0.0, t_max=1.0), images(loaded.model))


# ---- exports carry the setting --------------------------------------------------------------------------------

def _sample(checkpoint, out) -> np.ndarray:
    assert main(["sample", "--checkpoint", str(checkpoint), "--out", str(out), "--per-class", "1",
                 "--no-progress", "--no-png"]) == 0
    return np.load(out / "samples.npz")["images"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_export_samples_exactly_as_its_checkpoint(tmp_path, suffix, capsys):
    ckpt = training_checkpoint(tmp_path / "run")
    export = tmp_path / f"model{suffix}"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(export)]) == 0
    want = _sample(ckpt, tmp_path / "a")
    got = _sample(export, tmp_path / "b")
    assert np.array_equal(got, want)
    log = capsys.readouterr().out
    assert "recorded in the export" in log and "from the flags" not in log.split("recorded in the export")[1]
    recorded = json.loads((tmp_path / "b" / "sample_settings.json").read_text())
    assert (recorded["omega"], recorded["t_min"], recorded["t_max"]) == (3.0, 0.1, 0.8)
    if suffix == ".pt":  # the state dict stays the release's (its port loads it); the setting lives beside it
        sd = torch.load(export, weights_only=True)
        assert all(k.startswith("net.") and torch.is_tensor(v) for k, v in sd.items())
        assert json.loads(sidecar_path(export).read_text())["sampling_setting"]["ema"] == "hl0.05"
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        from release_port import ReleasePortNet, release_generate

        cfg = pmf.load_model(export).config
        port = ReleasePortNet(cfg, eval_mode=True).load_release(sd).eval()
        noise = image_noise(range(len(want)), (1, 8, 8), seed=0, noise_scale=cfg.noise_scale)
        images = to_uint8(release_generate(port, noise, torch.arange(len(want)) % cfg.num_classes, **RECIPE))
        assert np.abs(images.numpy().astype(int) - want.astype(int)).max() <= 1


def test_export_generator_json_records_the_setting(tmp_path):
    ckpt = training_checkpoint(tmp_path / "run", prediction="u")
    out = tmp_path / "gen.pt2"
    assert main(["export-generator", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    setting = SamplingSetting.from_dict(info["sampling_setting"])
    assert (setting.omega, setting.t_min, setting.t_max, setting.prediction) == (3.0, 0.1, 0.8, "u")
    program = torch.export.load(str(out)).module()
    loaded = pmf.load_checkpoint(ckpt)
    eps = image_noise(range(2), (1, 8, 8), seed=0)
    labels = torch.tensor([0, 1])
    full = [torch.full((2,), v) for v in (3.0, 0.1, 0.8)]
    want = sample(loaded.model, eps * loaded.model.config.noise_scale, labels, setting=setting)
    torch.testing.assert_close(program(eps, labels, *full), want, rtol=1e-5, atol=1e-5)


def test_eval_and_serve_sample_a_u_prediction_checkpoint_as_u(tmp_path, monkeypatch):
    import pmf.evaluation.offline_score

    seen = []
    monkeypatch.setattr(pmf.evaluation.offline_score, "offline_scores",
                        lambda images, labels, **kw: seen.append(images) or
                        {"accuracy": 1.0, "frechet": 1.0, "frechet_real_floor": 0.1, "accuracy_real_floor": 1.0,
                         "frechet_class_means": 2.0, "dataset": kw.get("dataset")})
    ckpt = training_checkpoint(tmp_path / "run", prediction="u")
    assert main(["eval", "--checkpoint", str(ckpt), "--offline", "--dataset", "digits", "--num-images", "10",
                 "--no-progress", "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["settings"]["prediction"] == "u"
    loaded = pmf.load_checkpoint(ckpt)
    labels = torch.arange(10) % loaded.model.config.num_classes
    want = torch.cat([b for _, b in generate(loaded, range(10), labels, seed=0, progress=False)])
    assert np.array_equal(seen[0], want.numpy())

    pytest.importorskip("fastapi")
    from pmf.cli import build_parser
    from pmf.commands.serve import build

    _, info, batcher = build(build_parser().parse_args(["serve", "--checkpoint", str(ckpt), "--device", "cpu"]))
    assert info.setting.prediction == batcher.prediction == "u"
    from pmf.serve.batcher import ImageJob

    job = ImageJob((0, 3), 0, 3.0, 0.1, 0.8, 1)
    got = batcher.run_batch([(types.SimpleNamespace(job=job), i) for i in range(2)], steps=1)
    noise = image_noise([0], (1, 8, 8), seed=0, noise_scale=loaded.model.config.noise_scale)
    first = to_uint8(sample(loaded.model, noise, torch.tensor([0]), **RECIPE, prediction="u"))
    assert np.array_equal(got[:1], first.numpy())


def test_one_ema_naming_rule_for_the_trainer_and_the_released_setting():
    from pmf.released_models import RELEASED
    from pmf.sampling_setting import ema_name
    from pmf.training.config import EMAConfig
    from pmf.training.ema import ema_schedules

    assert ema_name("halflife", 2000.0) == ema_name("halflife", 2000) == "hl2000"
    assert list(ema_schedules(EMAConfig(halflives_kimg=[500.0, 1000], decays=[0.99]))) == ["hl500", "hl1000",
                                                                                            "d0.99"]
    for rel in RELEASED.values():  # a released EMA's name is the one a run of that half-life keeps
        assert ema_name("halflife", rel.ema_halflife_kimg) in ema_schedules(
            EMAConfig(halflives_kimg=[float(rel.ema_halflife_kimg)], decays=[]))
