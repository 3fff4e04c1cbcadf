"""The sharded Muon on CPU processes (gloo): equal to the single-process optimiser on the release fixture's
weights and gradients, Newton-Schulz over row blocks of any shape, and the owner assignment that balances its
cost over the ranks."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import launcher_env
from pmf import parallel as P
from pmf.parallel.process import free_port

pytestmark = pytest.mark.usefixtures("one_thread")


def test_owner_assignment_balances_newton_schulz_cost():
    from pmf.model_configs import model_config
    from pmf.nn.model import PMFDiT
    from pmf.training.optim import split_parameters

    model = PMFDiT(model_config("pMF-B/16"))
    shapes = [tuple(p.shape) for p in split_parameters(model)[0]]
    total = sum(P.ns_cost(s) for s in shapes)
    for n in (2, 4, 8):
        load = [0] * n  # Newton-Schulz cost per rank of the owner assignment
        for s, r in zip(shapes, P.assign_owners(shapes, n)):
            load[r] += P.ns_cost(s)
        assert sum(load) == total
        assert max(load) <= 1.1 * total / n, (n, max(load) / total)  # work per rank falls as 1/N
    assert P.assign_owners(shapes, 4) == P.assign_owners(shapes, 4)


def _fixture_setup():
    """pMF-Tiny/4 with the release fixture's weights, and the 4 steps of gradients of optim_traj_tiny.npz."""
    from helpers import FIXTURES, fixture_gradients
    from pmf import build_model, load_release_state_dict
    from pmf.nn.release import from_release_key

    sd = torch.load(FIXTURES / "net_tiny.pt", weights_only=True)
    model = load_release_state_dict(build_model("pMF-Tiny/4"), sd)
    keys = [k for k in sd if k != "rope_freqs"]
    grads = [{from_release_key(k): g for k, g in step.items()} for step in fixture_gradients(model, keys, 4)]
    return model, grads, keys


def _optim_cfg():
    from pmf.training.config import OptimConfig

    return OptimConfig(lr=1e-2)


def _muon_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.tensor import distribute_tensor

    launcher_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, grads, _ = _fixture_setup()
    mesh = P.build_mesh("fsdp", torch.device("cpu"))
    P.shard_model(model, mesh)
    opt = P.build_sharded_optimizer(model, _optim_cfg(), mesh)
    params = dict(model.named_parameters())
    result = {}
    for step, step_grads in enumerate(grads, start=1):
        for n, p in params.items():
            p.grad = distribute_tensor(step_grads[n], p.device_mesh, p.placements, src_data_rank=None)
        opt.step()
        if step in (1, 4):
            result.update({f"{n}@{step}": P.full(p.detach()) for n, p in params.items()})
    # uneven row blocks, fewer rows than ranks, tall and wide matrices, repeated shapes
    from pmf.training.optim import newton_schulz_batched

    for i, (m, n) in enumerate(ODD_SHAPES):
        whole = torch.randn(m, n, generator=torch.Generator().manual_seed(i))
        start, rows = P._rows(m, world, rank)
        got = P.orthogonalize_sharded([whole[start:start + rows]], [(m, n)], dist.group.WORLD, newton_schulz_batched)
        result[f"odd{i}"] = got[0]
    together = [torch.randn(m, n, generator=torch.Generator().manual_seed(i)) for i, (m, n) in enumerate(ODD_SHAPES)]
    blocks = [w[P._rows(w.shape[0], world, rank)[0]:][:P._rows(w.shape[0], world, rank)[1]] for w in together]
    result["together"] = P.orthogonalize_sharded(blocks, ODD_SHAPES, dist.group.WORLD, newton_schulz_batched)
    result["rows"] = [P._rows(m, world, rank) for m, _ in ODD_SHAPES]
    torch.save(result, out + f".{rank}")
    dist.destroy_process_group()


ODD_SHAPES = [(5, 7), (13, 4), (3, 3), (1, 6), (5, 7), (9, 9)]


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_sharded_muon_equals_single_process(tmp_path, fixtures_dir, world):
    """The sharded optimiser on the release fixture's weights and gradients (optim_traj_tiny.npz): equal to the
    single-process optimiser to float rounding, and within the fixture's tolerance of optax's trajectory."""
    import numpy as np

    from pmf.nn.release import to_release_key
    from pmf.training.optim import build_optimizer

    out = str(tmp_path / "sharded.pt")
    mp.spawn(_muon_worker, args=(world, free_port(), out), nprocs=world, join=True)
    model, grads, _ = _fixture_setup()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, _optim_cfg())
    sharded = torch.load(out + ".0")
    ref = np.load(fixtures_dir / "optim_traj_tiny.npz")
    worst_single, worst_optax = 0.0, 0.0
    for step, step_grads in enumerate(grads, start=1):
        for n, p in model.named_parameters():
            p.grad = step_grads[n].clone()
        opt.step()
        if step not in (1, 4):
            continue
        for n, p in model.named_parameters():
            moved = (p.detach().double() - start[n].double()).norm()
            err = ((sharded[f"{n}@{step}"].double() - p.detach().double()).norm() / moved).item()
            want = torch.from_numpy(ref[f"param{step}/{to_release_key(n)}"]).double()
            err_optax = ((sharded[f"{n}@{step}"].double() - want).norm() / (want - start[n].double()).norm()).item()
            assert err < 1e-5 and err_optax < 1e-4, (step, n, err, err_optax)
            worst_single, worst_optax = max(worst_single, err), max(worst_optax, err_optax)
    print(f"sharded Muon x {world}: vs single process {worst_single:.1e}, vs optax fixture {worst_optax:.1e} "
          "(relative to the update)")

    from pmf.training.optim import newton_schulz

    for i, (m, n) in enumerate(ODD_SHAPES):
        ref = newton_schulz(torch.randn(m, n, generator=torch.Generator().manual_seed(i)))
        for r in range(world):
            part = torch.load(out + f".{r}")
            start, rows = part["rows"][i]
            assert part[f"odd{i}"].shape == (rows, n) and part["together"][i].shape == (rows, n)
            torch.testing.assert_close(part[f"odd{i}"], ref[start:start + rows], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(part["together"][i], ref[start:start + rows], rtol=1e-4, atol=1e-5)
