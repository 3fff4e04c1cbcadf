"""FSDP2 / HSDP training on CPU processes (gloo): the weights, EMAs and optimiser state after a few steps equal
those of DDP with the same world size and seed; the per-rank state shrinks with the shard count; sharded (DCP)
checkpoints are atomic, resume under another world size and another --parallel mode, and are read by load_model
and pmf export. The sharded Muon: test_sharded_muon.py; the ordered reduction: test_reduction.py; a rank killed
mid-run: test_fsdp_sigkill.py.

Why DDP is the reference: with the same world size every rank reads the same images and draws the same
losses under both modes (both follow (seed, step, rank)), and both average the gradients over the ranks. With
the ordered reduction (the default on gloo) both sum every gradient element over the ranks in the same order,
the model gives FSDP2 and plain autograd the same accumulation order (``head_input``), and Newton-Schulz gives
the same bits for a matrix alone or in a stack, so the runs agree to the bit; the tests assert that, and the
acceptance bound (1e-5 relative per tensor) besides."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from helpers import ema_names, launcher_env, tiny_config
from helpers import rel_frobenius as rel
from pmf.checkpoints.load import latest_checkpoint, list_checkpoints, load_model, read_file
from pmf.errors import PMFError
from pmf.parallel.process import free_port

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5  # relative, per tensor: |a - b| / |b| (Frobenius norms)


def _runs_worker(rank: int, world: int, port: int, runs: list) -> None:
    """Each (out, overrides, resume) of ``runs`` in turn, in one process group; state bytes saved per run."""
    from pmf.parallel.process import cleanup
    from pmf.training.loop import train

    launcher_env(rank, world, port)
    for out, kw, resume in runs:
        summary = train(make_config(out, kw), resume=resume, progress=False)
        torch.save(summary, os.path.join(out, f"summary{rank}.pt"))
    cleanup()


def make_config(out, kw: dict):
    """``tiny_config`` (a 2-block model of 8x8 digits) with ``kw``; with ``recipe="tiny"`` the tiny recipe."""
    kw = dict(kw)
    if kw.pop("recipe", None) == "tiny":
        from pmf.training.config import TrainConfig
        from pmf.training.recipes import recipe

        data = recipe("tiny").to_dict()
        data.update(out=str(out), num_workers=0, **kw)
        return TrainConfig.from_dict(data)
    return tiny_config(out, sample=dict(every=0), **kw)


def spawn_runs(world: int, runs: list) -> None:
    mp.spawn(_runs_worker, args=(world, free_port(), runs), nprocs=world, join=True)


def compare_runs(a, b, tol: float | None = TOL, exact: bool = False) -> float:
    """Max relative difference over the raw weights and every EMA of the newest checkpoints of two runs; every
    tensor within ``tol`` (None: no bound), and with ``exact`` equal to the bit. The tensors that start at zero
    (final layers, residual gates) are the sensitive ones: their whole value is a few orthogonalised updates."""
    ca, cb = latest_checkpoint(a / "checkpoints"), latest_checkpoint(b / "checkpoints")
    worst, checked = 0.0, 0
    for ema in ("raw", *ema_names(cb)):
        sa, sb = load_model(ca, ema=ema).state_dict(), load_model(cb, ema=ema).state_dict()
        assert set(sa) == set(sb)
        for k in sa:
            err = rel(sa[k], sb[k])
            assert tol is None or err <= tol, (ema, k, err)
            assert not exact or torch.equal(sa[k], sb[k]), (ema, k, err)
            worst, checked = max(worst, err), checked + 1
    assert checked > 100
    return worst


def test_fsdp_two_processes_matches_ddp_and_resumes_across_modes(tmp_path):
    # one process group for every run (starting processes is the slow part on a loaded machine)
    ddp, fsdp, half, hsdp, ckpt = (tmp_path / n for n in ("ddp", "fsdp", "half", "hsdp", "ckpt"))
    spawn_runs(2, [
        (ddp, dict(parallel="ddp"), None),
        (fsdp, dict(parallel="fsdp"), None),
        (half, dict(parallel="fsdp", steps=3), None),
        (half, dict(parallel="ddp"), "auto"),  # a DCP checkpoint of fsdp x 2 resumed by ddp x 2
        # 2 replicas of 1 shard, checkpoints written in the background
        (hsdp, dict(parallel="hsdp", shard_size=1, steps=4, ckpt_every=2, async_checkpoint=True), None),
        (ckpt, dict(parallel="fsdp", grad_checkpointing=True), None),  # activation checkpointing under FSDP2
    ])
    # 6 steps, checkpoints at 3 and 6: fsdp writes sharded folders, ddp single files
    assert [p.name for _, p in list_checkpoints(fsdp / "checkpoints")] == ["step_00000003", "step_00000006"]
    assert (fsdp / "checkpoints" / "step_00000006" / "__1_0.distcp").is_file()  # each rank wrote its part
    worst = compare_runs(fsdp, ddp, exact=True)
    compare_runs(half, ddp, exact=True)
    print(f"fsdp x 2 with activation checkpointing vs ddp x 2: {compare_runs(ckpt, ddp, exact=True):.2e}")
    print(f"fsdp x 2 vs ddp x 2 after 6 steps: max relative difference {worst:.2e}")
    # the optimiser state too: Muon momentum, Adam moments and step counts, tensor by tensor
    from pmf.training.state import to_single_file

    opt_f = read_file(to_single_file(fsdp / "checkpoints" / "step_00000006", tmp_path / "fsdp6.pt"))["optimizer"]
    opt_d = read_file(ddp / "checkpoints" / "step_00000006.pt")["optimizer"]
    assert opt_f["state"].keys() == opt_d["state"].keys() and len(opt_d["state"]) > 50
    for i, st in opt_d["state"].items():
        assert st.keys() == opt_f["state"][i].keys(), i
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(opt_f["state"][i][name]), torch.as_tensor(value)), (i, name)
    # a broken run would not be close: the weights moved from their initial values
    first = load_model(fsdp / "checkpoints" / "step_00000003", ema="raw").state_dict()
    last = load_model(fsdp / "checkpoints" / "step_00000006", ema="raw").state_dict()
    assert rel(first["shared_blocks.0.attn.q_proj.weight"], last["shared_blocks.0.attn.q_proj.weight"]) > 1e-3

    # one process resumes the fsdp x 2 checkpoint of step 3 (without a process group) and continues
    from pmf.training.loop import train

    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(fsdp / "checkpoints" / "step_00000003", single / "checkpoints" / "step_00000003")
    summary = train(tiny_config(single, sample=dict(every=0)), resume="auto", progress=False)
    assert summary["resumed_at"] == 3 and (single / "checkpoints" / "step_00000006.pt").is_file()
    check_atomic_and_export(hsdp, tmp_path)


def check_atomic_and_export(run, tmp_path):
    from pmf.checkpoints.load import export_ema
    from pmf.training.state import to_single_file

    ckpts = run / "checkpoints"
    assert [p.name for _, p in list_checkpoints(ckpts)] == ["step_00000002", "step_00000004"]
    good = ckpts / "step_00000004"
    assert latest_checkpoint(ckpts) == good
    # an interrupted save: the hidden temporary folder, and a folder without its meta, are never picked
    (ckpts / ".step_00000006.tmp").mkdir()
    (ckpts / ".step_00000006.tmp" / "__0_0.distcp").write_bytes(b"partial")
    (ckpts / "step_00000008").mkdir()
    (ckpts / "step_00000008" / ".metadata").write_bytes(b"partial")
    assert latest_checkpoint(ckpts) == good

    from pmf.cli import main

    assert main(["export", str(good), str(tmp_path / "step_00000004.pt"), "--format", "checkpoint"]) == 0
    single = tmp_path / "step_00000004.pt"
    assert to_single_file(good, tmp_path / "again.pt").stat().st_size > 0
    obj = read_file(single)
    assert obj["step"] == 4 and set(obj["ema"]) == {"hl0.05", "d0.9"} and obj["optimizer"]["state"]
    a = load_model(good, ema="d0.9").state_dict()
    b = load_model(single, ema="d0.9").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    release = export_ema(good, tmp_path / "release.pt", ema="raw")
    assert any(k.startswith("net.") for k in torch.load(release, weights_only=True))
    assert main(["export", str(ckpts / "step_00000008"), str(tmp_path / "x.pt"), "--format", "checkpoint"]) == 2


def test_fused_du_dt_is_refused_under_fsdp():
    with pytest.raises(PMFError, match="fused form does not run under FSDP2"):
        tiny_config("x", parallel="fsdp", loss=dict(jvp="fused"))
    with pytest.raises(PMFError, match="parallel"):
        tiny_config("x", parallel="zero3")


def _load_summaries(run, world):
    return [torch.load(run / f"summary{r}.pt") for r in range(world)]


@pytest.mark.slow
def test_four_processes_fsdp_and_hsdp_match_ddp_and_shrink_the_state(tmp_path):
    """The tiny recipe for 6 steps under 4 processes: fsdp x 4 and hsdp 2 x 2 against ddp x 4, with the inline
    and the split du/dt; per-rank state of fsdp x 4 at most 0.3 of DDP's; the fsdp x 4 checkpoint then resumes
    under fsdp x 2, ddp in one process, and in one plain process."""
    base = dict(recipe="tiny", steps=6, ckpt_every=3, keep_last=5)
    names = ("ddp", "fsdp", "hsdp", "ddp_split", "fsdp_split", "ddp_native", "fsdp_native")
    runs = {name: tmp_path / name for name in names}
    spawn_runs(4, [
        (runs["ddp"], dict(base, parallel="ddp"), None),
        (runs["fsdp"], dict(base, parallel="fsdp"), None),
        (runs["hsdp"], dict(base, parallel="hsdp", shard_size=2), None),
        (runs["ddp_split"], dict(base, parallel="ddp", loss=dict(jvp="split")), None),
        (runs["fsdp_split"], dict(base, parallel="fsdp", loss=dict(jvp="split")), None),
        # the backend's own collectives: another summation order in each mode
        (runs["ddp_native"], dict(base, parallel="ddp", reduce="native"), None),
        (runs["fsdp_native"], dict(base, parallel="fsdp", reduce="native"), None),
    ])
    figures = {
        "fsdp x 4 (inline)": compare_runs(runs["fsdp"], runs["ddp"], exact=True),
        "hsdp 2 x 2 (inline)": compare_runs(runs["hsdp"], runs["ddp"], exact=True),
        "fsdp x 4 (split)": compare_runs(runs["fsdp_split"], runs["ddp_split"], exact=True),
        # not bounded by 1e-5: the zero-initialised tensors reach about 1.5e-5 (docs/parallel.md)
        "fsdp x 4 vs ddp x 4, native reduction": compare_runs(runs["fsdp_native"], runs["ddp_native"], tol=1e-4),
        "ddp x 4, ordered vs native reduction": compare_runs(runs["ddp_native"], runs["ddp"], tol=1e-4),
    }
    print({k: f"{v:.2e}" for k, v in figures.items()})

    ddp_bytes, fsdp_bytes = _load_summaries(runs["ddp"], 4), _load_summaries(runs["fsdp"], 4)
    for kind in ("parameters", "gradients", "optimizer", "emas"):
        full = ddp_bytes[0]["state_bytes"][kind]
        worst = max(s["state_bytes"][kind] for s in fsdp_bytes)
        print(f"{kind}: ddp {full} B per rank, fsdp x 4 at most {worst} B per rank ({worst / full:.3f})")
        assert worst <= 0.3 * full, kind

    # resume the fsdp x 4 checkpoint of step 3 under other layouts, one step each
    chain = tmp_path / "chain"
    (chain / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(runs["fsdp"] / "checkpoints" / "step_00000003", chain / "checkpoints" / "step_00000003")
    spawn_runs(2, [(chain, dict(base, steps=4, parallel="fsdp"), "auto")])
    assert [p.name for _, p in list_checkpoints(chain / "checkpoints")][-1] == "step_00000004"
    from pmf.training.loop import train

    s5 = train(make_config(chain, dict(base, steps=5, parallel="ddp")), resume="auto", progress=False)
    s6 = train(make_config(chain, dict(base, steps=6, parallel="fsdp")), resume="auto", progress=False)
    assert (s5["resumed_at"], s6["resumed_at"]) == (4, 5)
    assert (chain / "checkpoints" / "step_00000005.pt").is_file()  # ddp writes a single file
    assert (chain / "checkpoints" / "step_00000006").is_dir()  # fsdp (one process) a DCP folder
    load_model(chain / "checkpoints" / "step_00000006")
