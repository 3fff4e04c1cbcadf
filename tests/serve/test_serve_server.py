"""pmf serve through a real uvicorn server on 127.0.0.1: concurrent requests batched exactly, and `pmf serve` as
a process that stops on Ctrl-C."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from helpers import npz_body as npz  # noqa: E402
from helpers import sample_reference as reference  # noqa: E402
from helpers import serve_args, start_serve  # noqa: E402
from pmf.commands.serve import build  # noqa: E402
from pmf.parallel.process import free_port  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


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
