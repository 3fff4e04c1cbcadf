"""pmf serve: every route and error, images equal to pmf sample's whether batched or not, through the ASGI app
in-process and through a real uvicorn server on 127.0.0.1."""

import asyncio
import io
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import pmf  # noqa: E402
from helpers import start_serve  # noqa: E402
from pmf.cli import build_parser, main  # noqa: E402
from pmf.commands.serve import build, is_loopback  # noqa: E402
from pmf.data.class_names import imagenet_names  # noqa: E402
from pmf.parallel.process import free_port  # noqa: E402
from pmf.sampling import generate  # noqa: E402
from pmf.serve import Batcher, ImageJob, ServerBusy, class_names  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SETTING = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}  # the test checkpoint's recipe sampling setting


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_release_sd):
    """A training-format checkpoint of the official tiny weights with a recipe (data 'digits', a sampling setting)."""
    model = pmf.load_release_state_dict(pmf.build_model("pMF-Tiny/4"), tiny_release_sd)
    path = tmp_path_factory.mktemp("serve") / "tiny.pt"
    sd = model.state_dict()
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd,
                "ema": {"d0.99": sd}, "train_config": {"arch": "pMF-Tiny/4", "data": "digits", "sample": SETTING}},
               path)
    return path


def serve_args(ckpt, *extra):
    return build_parser().parse_args(["serve", "--checkpoint", str(ckpt), *extra])


@pytest.fixture(scope="module")
def served(ckpt):
    app, info, batcher = build(serve_args(ckpt, "--max-images", "16", "--max-wait-ms", "20"))
    return app, info, batcher


@pytest.fixture(scope="module")
def client(served):
    with TestClient(served[0]) as c:
        yield c


@pytest.fixture(scope="module")
def model(ckpt):
    return pmf.load_checkpoint(ckpt).model


def reference(model, classes, seed, *, omega=2.0, t_min=0.1, t_max=0.9, steps=1):
    """What pmf sample computes for these classes (one batch, as `pmf sample` with <= 64 images)."""
    return np.concatenate([b.numpy() for _, b in generate(
        model, range(len(classes)), torch.tensor(classes), seed=seed, steps=steps, omega=omega, t_min=t_min,
        t_max=t_max, progress=False)])


def npz(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return dict(np.load(io.BytesIO(resp.content)))


# ------------------------------------------------------------------------------------------ images are exact
def test_npz_equals_pmf_sample(client, ckpt, tmp_path):
    """The external contract: {"classes": [3, 1, 4], "seed": 5, "format": "npz"} equals samples.npz of
    pmf sample --classes 3,1,4 --per-class 1 --seed 5 with the same omega, interval and steps."""
    got = npz(client.post("/generate", json={"classes": [3, 1, 4], "seed": 5, "format": "npz"}))
    assert main(["sample", "--checkpoint", str(ckpt), "--classes", "3,1,4", "--per-class", "1", "--seed", "5",
                 "--omega", "2", "--t-min", "0.1", "--t-max", "0.9", "--no-png", "--out", str(tmp_path)]) == 0
    want = np.load(tmp_path / "samples.npz")
    assert got["images"].dtype == np.uint8 and got["images"].shape == (3, 32, 32, 3)
    assert got["images"].std() > 10  # real images, not a constant
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["labels"], want["labels"])


def test_settings_are_per_request(client, model):
    body = {"classes": [7, 7], "seed": 11, "omega": 1.5, "t_min": 0.0, "t_max": 0.6, "steps": 2, "format": "npz"}
    got = npz(client.post("/generate", json=body))
    np.testing.assert_array_equal(got["images"], reference(model, [7, 7], 11, omega=1.5, t_min=0.0, t_max=0.6,
                                                           steps=2))
    other = npz(client.post("/generate", json={**body, "omega": 3.0}))
    assert not np.array_equal(other["images"], got["images"])


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


# ------------------------------------------------------------------------------------------------- routes
def test_formats(client, model):
    want = reference(model, [3, 1], 5)
    png = client.post("/generate", json={"classes": [3, 1], "seed": 5})  # png by default
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(png.content)))
    np.testing.assert_array_equal(grid[2:34, 2:34], want[0])  # make_grid: 2 px padding, image 0 first
    np.testing.assert_array_equal(grid[2:34, 36:68], want[1])
    js = client.post("/generate", json={"classes": [3, 1], "seed": 5, "format": "json"}).json()
    assert [im["label"] for im in js["images"]] == [3, 1] and [im["class_name"] for im in js["images"]] == ["3", "1"]
    import base64

    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(js["images"][0]["png"]))))
    np.testing.assert_array_equal(first, want[0])
    assert js["settings"] == {"seed": 5, **SETTING, "steps": 1, "ema": "d0.99", "noise_scale": 1.0}
    assert js["time_ms"] > 0


def test_info_and_health(client):
    info = client.get("/info").json()
    assert info["preset"] == "pMF-Tiny/4" and info["image_size"] == 32 and info["num_classes"] == 10
    assert info["classes"] == [str(i) for i in range(10)]  # the digits of the recipe's built-in set
    assert {k: info["defaults"][k] for k in SETTING} == SETTING and info["defaults"]["steps"] == 1
    assert info["limits"]["max_images"] == 16 and info["limits"]["max_steps"] == 4
    assert info["weights"] == {"precision": "fp32"}  # a torch checkpoint (an int8 ONNX file: test_onnx_quantize.py)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queued"] == 0


def test_page_is_package_data(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/app.js">' in page.text and "http" not in page.text.replace("http-equiv", "")  # no CDN
    js, css = client.get("/app.js"), client.get("/style.css")
    assert js.status_code == 200 and "/generate" in js.text and css.status_code == 200
    assert client.get("/static/../../etc/passwd").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"classes": [10]}, "classes[0]"),
    ({"classes": [1, -1]}, "classes[1]"),
    ({"classes": [1] * 17}, "classes"),
    ({"classes": []}, "classes"),
    ({}, "classes"),
    ({"classes": [1], "omega": 0}, "omega"),
    ({"classes": [1], "omega": -2.5}, "omega"),
    ({"classes": [1], "t_min": 0.8, "t_max": 0.2}, "t_min"),
    ({"classes": [1], "t_max": 1.5}, "t_max"),
    ({"classes": [1], "steps": 0}, "steps"),
    ({"classes": [1], "steps": 5}, "steps"),
    ({"classes": [1], "seed": -1}, "seed"),
    ({"classes": [1], "seed": 1.5}, "seed"),
    ({"classes": ["a"]}, "classes[0]"),
    ({"classes": [1], "format": "gif"}, "format"),
    ({"classes": [1], "colour": "red"}, "colour"),
    ([1, 2], "body"),
    (b'{"classes": [1', "body"),
    (b'{"classes": [1], "omega": NaN}', "omega"),
])
def test_bad_requests_get_422_naming_the_field(client, body, field):
    resp = client.post("/generate", content=body) if isinstance(body, bytes) else client.post("/generate", json=body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()
    assert detail["field"] == field and isinstance(detail["detail"], str) and detail["detail"].startswith(field)
    assert client.get("/health").json()["status"] == "ok"


def test_oversized_body_is_refused(client):
    resp = client.post("/generate", content=b'{"classes": [' + b"1," * 40000 + b"1]}")
    assert resp.status_code == 413 and resp.json()["field"] == "body"


def test_token(ckpt):
    app, _, _ = build(serve_args(ckpt, "--token", "s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/info").status_code == 401
        assert c.post("/generate", json={"classes": [1]}).status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/generate", json={"classes": [1], "format": "npz"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and c.get("/info", headers={"Authorization": "Bearer s3cret"}).json()["auth"]


def test_non_loopback_host_needs_a_token(ckpt, capsys, monkeypatch):
    monkeypatch.delenv("PMF_SERVE_TOKEN", raising=False)
    assert main(["serve", "--checkpoint", str(ckpt), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_class_names():
    assert class_names(10, data="mnist-5k") == [str(i) for i in range(10)]
    assert class_names(10, data="data/my_folder") == [f"class {i}" for i in range(10)]
    names = class_names(1000, arch="pMF-B/16")
    if imagenet_names() is None:
        assert names[0] == "class 0"
    else:
        assert names[0] == "tench" and names[207] == "golden retriever" and len(names) == 1000


# ---------------------------------------------------------------------------------------- a real server
class ServerThread:
    """A real uvicorn server for ``app`` on 127.0.0.1 and a free port, in a thread; stopped on exit."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive()


def test_real_server_batches_concurrent_requests_exactly(ckpt, model):
    """Through uvicorn with --exact-batching: concurrent requests (one of them from a client that hangs up)
    share passes and each gets pmf sample's images; a bad request in the middle gets 422."""
    app, _, batcher = build(serve_args(ckpt, "--max-wait-ms", "50", "--exact-batching"))
    bodies = [{"classes": [i % 10, (3 * i) % 10], "seed": 100 + i, "omega": 1.0 + i / 4, "format": "npz"}
              for i in range(8)]

    async def clients(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            payload = b'{"classes": [1, 2, 3], "seed": 1}'
            writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            await writer.drain()
            writer.close()  # hangs up before the answer
            good = [c.post("/generate", json=b) for b in bodies]
            bad = c.post("/generate", json={"classes": [1], "omega": -1})
            return await asyncio.gather(*good), await bad

    with ServerThread(app) as srv:
        good, bad = asyncio.run(clients(srv.url))
        assert bad.status_code == 422 and bad.json()["field"] == "omega"
        for body, resp in zip(bodies, good):
            got = npz(resp)
            want = reference(model, body["classes"], body["seed"], omega=body["omega"])
            np.testing.assert_array_equal(got["images"], want)
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    assert max(batcher.batch_sizes) > 2  # some requests were merged into one pass


@pytest.mark.slow
def test_cli_serves_and_stops_on_ctrl_c(ckpt, tmp_path):
    """`pmf serve` as a process: /health answers, a request works, SIGINT stops it cleanly (exit 0)."""
    import signal

    proc, url = start_serve(ckpt)
    try:
        resp = httpx.post(f"{url}/generate", json={"classes": [99]})
        assert resp.status_code == 422
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


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
