"""pmf serve's batcher: images of requests merged into shared passes equal those each request gets alone
(float-exact with exact batching, within one uint8 level by default), across passes, with cancelled and failed
requests and a full queue."""

import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from helpers import sample_reference as reference  # noqa: E402
from pmf.serve import Batcher, ImageJob, ServerBusy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_concurrent_requests_share_a_pass_and_keep_their_images(served, model):
    """Requests with different seeds, classes, omegas and intervals merged into one forward pass give the
    images each gives alone; requests with other steps go to another pass."""
    batcher = Batcher(model, noise_scale=1.0, max_batch=64, max_wait_ms=200, exact=True)
    jobs = [ImageJob((3, 1, 4), 5, 2.0, 0.1, 0.9, 1), ImageJob((0, 9), 123, 4.0, 0.2, 0.5, 1),
            ImageJob((2,), 7, 1.0, 0.0, 1.0, 1), ImageJob((5, 6), 8, 2.5, 0.3, 0.7, 2)]

    async def go():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.generate(j) for j in jobs))
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert batcher.batch_sizes == {6: 1, 2: 1}  # one pass of the six 1-step images, one of the 2-step ones
    for job, got in zip(jobs, results):
        want = reference(model, list(job.labels), job.seed, omega=job.omega, t_min=job.t_min, t_max=job.t_max,
                         steps=job.steps)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("pad", [False, True])
def test_large_request_spans_passes(model, pad):
    """A request larger than --max-batch is split over passes and keeps its images; padded batches (for
    --compile, which gives up the per-request row layout) drop their copies and agree to one level."""
    batcher = Batcher(model, noise_scale=1.0, max_batch=4, max_wait_ms=0, pad_batches=pad, exact=True)
    job = ImageJob((1, 2, 3, 4, 5, 6), 3, 2.0, 0.1, 0.9, 1)

    async def go():
        await batcher.start()
        try:
            return await batcher.generate(job)
        finally:
            await batcher.stop()

    got, want = asyncio.run(go()), reference(model, list(job.labels), 3)
    assert batcher.batch_sizes == {4: 1, 2: 1}
    if pad:
        assert batcher.padded_size(3) == 4 and batcher.padded_size(5) == 4 and batcher.padded_size(1) == 1
        assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1
    else:
        np.testing.assert_array_equal(got, want)


def test_cancelled_request_does_not_break_its_batch(model):
    batcher = Batcher(model, noise_scale=1.0, max_batch=64, max_wait_ms=100)
    keep, gone = ImageJob((1, 2), 4, 2.0, 0.1, 0.9, 1), ImageJob((3,), 9, 2.0, 0.1, 0.9, 1)

    async def go():
        await batcher.start()
        try:
            a = asyncio.ensure_future(batcher.generate(keep))
            b = asyncio.ensure_future(batcher.generate(gone))
            await asyncio.sleep(0.01)
            b.cancel()  # the client went away while its images were queued
            return await a, b
        finally:
            await batcher.stop()

    got, cancelled = asyncio.run(go())
    assert cancelled.cancelled()
    assert batcher.batch_sizes == {2: 1}  # the cancelled image was dropped, the others computed
    np.testing.assert_array_equal(got, reference(model, [1, 2], 4))


def test_failed_pass_fails_its_requests_only(model, monkeypatch):
    batcher = Batcher(model, noise_scale=1.0, max_wait_ms=0)
    real, calls = batcher.run_batch, []

    def flaky(items, steps):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(items, steps)

    monkeypatch.setattr(batcher, "run_batch", flaky)

    async def go():
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="out of memory"):
                await batcher.generate(ImageJob((1,), 0, 2.0, 0.1, 0.9, 1))
            return await batcher.generate(ImageJob((1,), 0, 2.0, 0.1, 0.9, 1))
        finally:
            await batcher.stop()

    np.testing.assert_array_equal(asyncio.run(go()), reference(model, [1], 0))


def test_full_queue_is_busy(model):
    batcher = Batcher(model, noise_scale=1.0, max_queue=3)

    async def go():
        await batcher.start()
        try:
            with pytest.raises(ServerBusy, match="limit 3"):
                await batcher.generate(ImageJob((1, 2, 3, 4), 0, 2.0, 0.1, 0.9, 1))
        finally:
            await batcher.stop()

    asyncio.run(go())


def test_merged_pass_is_float_exact(model, monkeypatch):
    """With exact=True (--exact-batching), before rounding to uint8: every image of a pass that serves several
    requests (one of them split: only its image 1 is in this pass) equals, to the last bit, the same image
    sampled in a batch of its own request (as pmf sample does). Merged into one call, the few-row GEMMs of the
    embedders and the vectorised SiLU's tail differ on some CPUs."""
    from pmf.sampling import image_noise, sample

    monkeypatch.setattr("pmf.serve.batcher.to_uint8", lambda x: x.float())
    batcher = Batcher(model, noise_scale=1.0, exact=True)
    jobs = [ImageJob((1, 2), 2, 3.0, 0.2, 0.8, 1), ImageJob((0, 1, 2, 9), 4, 1.5, 0.1, 0.9, 1),
            ImageJob((5, 6), 3, 1.0, 0.0, 1.0, 1)]

    class P:
        def __init__(self, job):
            self.job = job

    items = [(P(j), i) for j in jobs for i in range(len(j.labels)) if j.seed != 3 or i == 1]
    got = torch.as_tensor(batcher.run_batch(items, 1))
    want = {}
    for j in jobs:
        n = len(j.labels)
        want[j] = sample(model, image_noise(range(n), (3, 32, 32), seed=j.seed), torch.tensor(j.labels),
                         omega=j.omega, t_min=j.t_min, t_max=j.t_max)
    assert got.shape[0] == len(items) == 7
    for row, (p, i) in enumerate(items):
        assert torch.equal(got[row], want[p.job][i]), f"image {i} of a request of {len(p.job.labels)}"


def test_default_batching_differs_by_at_most_one_level(model):
    """By default a pass merges its requests into one network call: images agree with pmf sample's to one
    uint8 level."""
    batcher = Batcher(model, noise_scale=1.0)
    assert not batcher.exact
    jobs = [ImageJob((4,), 1, 2.0, 0.1, 0.9, 1), ImageJob((1, 2, 3), 2, 3.0, 0.2, 0.8, 1)]

    class P:
        def __init__(self, job):
            self.job = job

    got = batcher.run_batch([(P(j), i) for j in jobs for i in range(len(j.labels))], 1)
    want = np.concatenate([reference(model, list(j.labels), j.seed, omega=j.omega, t_min=j.t_min, t_max=j.t_max)
                           for j in jobs])
    assert np.abs(got.astype(int) - want).max() <= 1
