"""pmf serve's routes through the ASGI app in-process: images equal to pmf sample's, every route and error, the
token. The batcher: test_batcher.py; a real uvicorn server on 127.0.0.1: test_serve_server.py."""

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from helpers import SERVE_SETTING as SETTING  # noqa: E402
from helpers import npz_body as npz  # noqa: E402
from helpers import sample_reference as reference  # noqa: E402
from helpers import serve_args  # noqa: E402
from pmf.cli import main  # noqa: E402
from pmf.commands.serve import build, is_loopback  # noqa: E402
from pmf.data.class_names import imagenet_names  # noqa: E402
from pmf.serve import class_names  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


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
