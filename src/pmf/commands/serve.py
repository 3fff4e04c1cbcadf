"""``pmf serve``: one-step generation as a web page and an HTTP API (FastAPI on uvicorn), with dynamic batching."""

from __future__ import annotations

import ipaddress
import os
import sys

import torch

from ..errors import PMFError
from ..export.onnx_runtime import is_onnx, onnx_checkpoint
from ..extras import needs
from ..sampling import PRECISIONS
from ._args import add_checkpoint, add_device, add_ema, check_device, load_for_sampling


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve one-step generation as a web page and an HTTP API",
                       description="POST /generate, GET /info, GET /health and the page at GET /. Requests that "
                       "arrive within --max-wait-ms share one forward pass; each image keeps its own noise "
                       "(see --exact-batching). A --checkpoint ending in .onnx (pmf export --out FILE.onnx) runs in "
                       "onnxruntime with no torch model in memory. Needs pip install 'pixel-meanflow[serve]'.")
    add_checkpoint(p)
    p.add_argument("--arch", default=None, help="architecture of a release-format file, or of --checkpoint random "
                   "(default: recorded or inferred)")
    add_ema(p)
    add_device(p)
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fp32 (default), or bf16 "
                   "autocast (images then differ slightly from fp32 ones)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network with frozen weights; "
                   "batches are padded to powers of two so at most log2(--max-batch)+1 graphs compile")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1); any other than loopback "
                   "needs --token")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--token", default=os.environ.get("PMF_SERVE_TOKEN"), help="require 'Authorization: Bearer "
                   "TOKEN' on /info and /generate (default: $PMF_SERVE_TOKEN)")
    p.add_argument("--max-batch", type=int, default=64, help="most images in one forward pass (default 64; 1: no "
                   "batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the first queued image waits for "
                   "others to share its forward pass (default 5)")
    exact = p.add_mutually_exclusive_group()
    exact.add_argument("--exact-batching", dest="exact_batching", action="store_true", default=False,
                       help="a pass computes each request by the network call pmf sample makes for it, so that "
                       "every image equals pmf sample's to the bit; requests then share no GEMM (docs/serve.md)")
    exact.add_argument("--fast-batching", dest="exact_batching", action="store_false",
                       help="(default) a pass merges its requests into one network call: a merged image may "
                       "differ from pmf sample's by one uint8 level in rare pixels")
    p.add_argument("--max-images", type=int, default=64, help="most images in one request (default 64)")
    p.add_argument("--max-steps", type=int, default=4, help="most sampling steps a request may ask for "
                   "(default 4)")
    p.add_argument("--max-queue", type=int, default=4096, help="most images waiting (default 4096); more get "
                   "503 and Retry-After")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(args):
    """(app, model info, batcher) from the parsed arguments."""
    for name in ("max_batch", "max_images", "max_steps", "max_queue", "port"):
        if getattr(args, name) < (0 if name == "port" else 1):
            raise PMFError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise PMFError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not is_loopback(args.host) and not args.token:
        raise PMFError(f"--host {args.host} exposes the server beyond this machine; pass --token SECRET (or set "
                       "PMF_SERVE_TOKEN), or keep 127.0.0.1 behind a reverse proxy (docs/serve.md)")
    with needs("serve", "pmf serve needs FastAPI and uvicorn"):
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    from ..data.class_names import checkpoint_class_names
    from ..sampling import prepare_sampler
    from ..serve import Batcher
    from ..serve.app import ModelInfo, ServeLimits, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    onnx = is_onnx(args.checkpoint)  # an exported file run in onnxruntime: no torch model in memory
    args.device = "cpu" if onnx and args.device is None else check_device(args.device)
    ckpt = onnx_checkpoint(args) if onnx else load_for_sampling(args, args.device)
    cfg = ckpt.model.config
    names = checkpoint_class_names(ckpt)
    info = ModelInfo(ckpt.arch, cfg.input_size, cfg.in_channels, names, ckpt.setting, cfg.noise_scale, ckpt.ema,
                     **({"weights": ckpt.model.weights} if onnx else {}))
    model = ckpt.model if onnx else prepare_sampler(ckpt.model, compile=args.compile)
    batcher = Batcher(model, noise_scale=cfg.noise_scale, device=args.device, precision=args.precision,
                      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                      pad_batches=args.compile, exact=args.exact_batching,
                      prediction=ckpt.setting.prediction)
    # an ONNX graph holds a fixed number of steps: requests may ask for that number only
    limits = ServeLimits(args.max_images, ckpt.model.steps, ckpt.model.steps) if onnx else \
        ServeLimits(args.max_images, args.max_steps)
    app = create_app(batcher, info, limits, token=args.token)
    return app, info, batcher


def run(args) -> int:
    app, info, _ = build(args)
    import uvicorn

    print(f"pmf serve: {info.preset or 'model'} ({info.image_size}px, {len(info.class_names)} classes), defaults "
          f"{info.setting.describe()}; batches of up to {args.max_batch} images; "
          f"http://{args.host}:{args.port}/", flush=True)
    # The forward pass runs in a worker thread that gives up the GIL in every torch op; with the default 5 ms
    # switch interval it can wait that long per op to get it back from a busy event loop.
    sys.setswitchinterval(0.0005)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log,
                timeout_graceful_shutdown=5)
    print("pmf serve: stopped", flush=True)
    return 0
