"""Dynamic batching: the images of requests that arrive within ``max_wait_ms`` of each other share one forward
pass of up to ``max_batch`` images, run in a worker thread so the event loop keeps serving.

Image i of a job with seed s uses the noise of ``image_noise([i], seed=s)`` and its own omega, interval and
class (all per-image inputs of the network), exactly as ``pmf sample --seed s`` computes it; only the number
of sampling steps must be shared, so the queue is grouped by steps.

Bit-exactness (``exact=True``, ``pmf serve --exact-batching``): a merged pass computes an image with other
row counts and tensor sizes than ``pmf sample`` does, and CPU kernels may round differently for them: MKL's
GEMM takes other paths for 1, 2-3 and >= 4 rows (the embedders see one row per image), oneDNN's convolution
another one for a single image, and the vectorised SiLU finishes a tensor with a scalar tail whose place moves
with its size (seen on an AVX2-only AMD EPYC: 1 ulp in a token-level MLP at even request sizes). So with
``exact`` a pass computes each request chunk (``SAMPLE_BATCH`` images) by its own network call, the call
``pmf sample`` makes, and takes the images it holds: every image equals ``pmf sample``'s to the bit, and
requests share the queue and the worker but no GEMM."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import PMFError
from ..sampling import image_noise, precision_context, sample_from, to_uint8
from ..sampling_setting import check_prediction

SAMPLE_BATCH = 64  # pmf sample's default --batch-size: image i is row i % 64 of a batch of that request


class ServerBusy(PMFError):
    """The queue holds ``max_queue`` images already (or the server is stopping): try again later."""


@dataclass(frozen=True)
class ImageJob:
    """The images of one request: image i has class ``labels[i]`` and the noise of (``seed``, i)."""

    labels: tuple[int, ...]
    seed: int
    omega: float
    t_min: float
    t_max: float
    steps: int


@dataclass(eq=False)
class _Pending:
    job: ImageJob
    future: asyncio.Future
    arrival: float
    images: list = field(default_factory=list)
    remaining: int = 0


class Batcher:
    """Queues ``ImageJob``s and answers each with its uint8 images [N, H, W, C].

    ``model`` is the network as ``prepare_sampler`` returns it, or a runtime of ``pmf.sampling.sample_from``
    (an ONNX file's ``pmf.export.onnx_runtime.OnnxGenerator``: pass ``device``; no torch model then). ``pad_batches``
    (for a compiled network, one graph per batch size) pads each batch to the next power of two, capped at
    ``max_batch``, by repeating its last image, so at most log2(max_batch) + 1 graphs are compiled. ``exact``
    computes each request chunk by its own call (module docstring): every image then equals ``pmf sample``'s to
    the bit, at the cost of the merged GEMMs; without it a merged image may differ from ``pmf sample``'s by one
    level in rare pixels. A pass that holds one request's batch is exact either way."""

    def __init__(self, model, *, noise_scale: float, device=None, precision: str = "fp32", max_batch: int = 64,
                 max_wait_ms: float = 5.0, max_queue: int = 4096, pad_batches: bool = False, exact: bool = False,
                 prediction: str = "x"):
        if max_batch < 1:
            raise PMFError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise PMFError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        cfg = model.config
        self.model, self.noise_scale, self.precision = model, float(noise_scale), precision
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.pad_batches = pad_batches
        check_prediction(prediction)
        self.prediction = prediction  # the network's (the checkpoint's sampling setting says which)
        precision_context(precision, self.device)  # checks the name now, not in the first request
        self._groups: dict[int, deque] = {}  # steps -> deque of (pending, image index)
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batch_sizes: Counter = Counter()  # images per forward pass -> how many passes had that many
        self.pass_seconds = 0.0  # time in forward passes (noise to uint8), for /health
        self.exact = exact and not pad_batches  # padded (compiled) passes run the compiler's kernels anyway

    # -- the event-loop side ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pmf-sampler")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pmf-batcher")

    async def stop(self) -> None:
        """Stop taking work: queued jobs fail with ``ServerBusy``, a forward pass in flight finishes."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for group in self._groups.values():
            for pending, _ in group:
                if not pending.future.done():
                    pending.future.set_exception(ServerBusy("the server is shutting down"))
        self._groups.clear()
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued(self) -> int:
        """Images waiting for a forward pass."""
        return self._queued

    async def generate(self, job: ImageJob) -> np.ndarray:
        """The job's images, uint8 [N, H, W, C], once the forward passes that hold them have run."""
        if self._task is None:
            raise ServerBusy("the batcher is not running")
        n = len(job.labels)
        if self._queued + n > self.max_queue:
            raise ServerBusy(f"{self._queued} images are queued already (limit {self.max_queue}); try again")
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop.create_future(), loop.time(), [None] * n, n)
        group = self._groups.setdefault(job.steps, deque())
        group.extend((pending, i) for i in range(n))
        self._queued += n
        self._wake.set()
        return np.stack(await pending.future)  # a cancelled request cancels the future: its images are skipped

    def _oldest_group(self) -> tuple[int, deque]:
        steps = min(self._groups, key=lambda s: self._groups[s][0][0].arrival)
        return steps, self._groups[steps]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queued:
                self._wake.clear()
                await self._wake.wait()
                continue
            steps, group = self._oldest_group()
            deadline = group[0][0].arrival + self.max_wait
            while len(group) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            items = [group.popleft() for _ in range(min(len(group), self.max_batch))]
            self._queued -= len(items)
            if not group:
                del self._groups[steps]
            items = [(p, i) for p, i in items if not p.future.done()]  # drop the images of requests gone
            if not items:
                continue
            try:
                images = await loop.run_in_executor(self._executor, self.run_batch, items, steps)
            except Exception as err:  # a failing pass fails its requests, never the batcher
                for p in {id(p): p for p, _ in items}.values():
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for (p, i), image in zip(items, images):
                p.images[i] = image
                p.remaining -= 1
                if p.remaining == 0 and not p.future.done():
                    p.future.set_result(p.images)

    # -- the worker-thread side ---------------------------------------------------------------------------
    @staticmethod
    def request_chunks(items) -> dict[tuple[int, int], tuple[object, int, list[int], list[int]]]:
        """The request chunks of a pass: (id of the request, chunk) -> (its job, its first image, the rows of
        the pass, their positions in the chunk), where chunk c holds the request's images c * ``SAMPLE_BATCH``
        onwards as one ``pmf sample`` batch does."""
        chunks: dict = {}
        for row, (p, i) in enumerate(items):
            first = i - i % SAMPLE_BATCH
            _, _, rows, pos = chunks.setdefault((id(p), first), (p.job, first, [], []))
            rows.append(row)
            pos.append(i - first)
        return chunks

    def padded_size(self, n: int) -> int:
        return min(self.max_batch, 1 << (n - 1).bit_length()) if self.pad_batches else n

    def run_batch(self, items, steps: int) -> np.ndarray:
        """One forward pass for ``items`` [(pending or anything with ``.job``, image index)]: uint8 [n, H, W, C]."""
        t0 = time.perf_counter()
        n = len(items)
        x = self._exact_pass(items, steps) if self.exact else self._merged_pass(items, steps)
        self.batch_sizes[n] += 1
        self.pass_seconds += time.perf_counter() - t0
        return to_uint8(x[:n]).numpy()

    def _merged_pass(self, items, steps: int) -> torch.Tensor:
        """All images of ``items`` in one network call (padded to ``padded_size``)."""
        n = len(items)
        jobs = [p.job for p, _ in items]
        noise = torch.cat([image_noise([i], self.shape, seed=job.seed) for job, (_, i) in zip(jobs, items)])
        labels = torch.tensor([job.labels[i] for job, (_, i) in zip(jobs, items)], dtype=torch.long)
        per_image = [torch.tensor([getattr(job, k) for job in jobs], dtype=torch.float32)
                     for k in ("omega", "t_min", "t_max")]
        size = self.padded_size(n)
        if size > n:  # repeat the last image: rows are computed independently, the copies are dropped
            noise, labels, *per_image = (torch.cat([t, t[-1:].expand(size - n, *t.shape[1:])])
                                         for t in (noise, labels, *per_image))
        return self._sample(noise, labels, *per_image, steps=steps)

    def _exact_pass(self, items, steps: int) -> torch.Tensor:
        """Each request chunk of ``items`` by the network call ``pmf sample`` makes for it (all its images, the
        ones of other passes included), its images in the rows of ``items``."""
        out = None
        for job, first, rows, pos in self.request_chunks(items).values():
            size = min(SAMPLE_BATCH, len(job.labels) - first)
            index = range(first, first + size)
            noise = image_noise(index, self.shape, seed=job.seed)
            labels = torch.tensor([job.labels[i] for i in index], dtype=torch.long)
            x = self._sample(noise, labels, *(torch.full((size,), float(getattr(job, k)))
                                              for k in ("omega", "t_min", "t_max")), steps=steps)[pos]
            out = x.new_empty(len(items), *x.shape[1:]) if out is None else out
            out[rows] = x
        return out

    def _sample(self, noise, labels, omega, t_min, t_max, *, steps: int) -> torch.Tensor:
        dev = self.device
        with torch.inference_mode(), precision_context(self.precision, dev):
            return sample_from(self.model, noise.to(dev), labels.to(dev), noise_scale=self.noise_scale, steps=steps,
                               omega=omega.to(dev), t_min=t_min.to(dev), t_max=t_max.to(dev),
                               prediction=self.prediction)
