"""``pmf serve``: one-step generation as a web page and an HTTP API (FastAPI on uvicorn), with dynamic batching."""

from __future__ import annotations

import ipaddress
import os
import sys

import torch

from ..errors import PMFError
from ..extras import needs
from ._args import add_arch, add_checkpoint, add_device, add_ema, load_sampler_arg
from ._config_flags import add_option_flags
from ._options import ServeOptions


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve one-step generation as a web page and an HTTP API",
                       description="POST /generate, GET /info, GET /health and the page at GET /. Requests that "
                       "arrive within --max-wait-ms share one forward pass; each image keeps its own noise "
                       "(see --exact-batching). A --checkpoint ending in .onnx (pmf export --out FILE.onnx) runs in "
                       "onnxruntime with no torch model in memory. Needs pip install 'pixel-meanflow[serve]'.")
    add_checkpoint(p)
    add_arch(p)
    add_ema(p)
    add_device(p)
    p.add_argument("--token", default=os.environ.get("PMF_SERVE_TOKEN"), help="require 'Authorization: Bearer "
                   "TOKEN' on /info and /generate (default: $PMF_SERVE_TOKEN)")
    exact = p.add_mutually_exclusive_group()
    exact.add_argument("--exact-batching", dest="exact_batching", action="store_true", default=False,
                       help="a pass computes each request by the network call pmf sample makes for it, so that "
                       "every image equals pmf sample's to the bit; requests then share no GEMM (docs/serve.md)")
    exact.add_argument("--fast-batching", dest="exact_batching", action="store_false",
                       help="(default) a pass merges its requests into one network call: a merged image may "
                       "differ from pmf sample's by one uint8 level in rare pixels")
    add_option_flags(p, ServeOptions)
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
    opts = ServeOptions.from_args(args)
    if not is_loopback(opts.host) and not args.token:
        raise PMFError(f"--host {opts.host} exposes the server beyond this machine; pass --token SECRET (or set "
                       "PMF_SERVE_TOKEN), or keep 127.0.0.1 behind a reverse proxy (docs/serve.md)")
    with needs("serve", "pmf serve needs FastAPI and uvicorn"):
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    from ..serve import Batcher
    from ..serve.app import ModelInfo, ServeLimits, create_app

    if opts.threads:
        torch.set_num_threads(opts.threads)
    sampler = load_sampler_arg(args)
    ckpt, cfg = sampler.loaded, sampler.config
    info = ModelInfo.from_meta(ckpt.meta, cfg, ema=ckpt.ema)  # the record the checkpoint or .onnx file carries
    batcher = Batcher(sampler.model, noise_scale=cfg.noise_scale, device=sampler.device, precision=opts.precision,
                      max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms, max_queue=opts.max_queue,
                      pad_batches=opts.compile, exact=args.exact_batching, prediction=ckpt.setting.prediction)
    # a sampler that holds a fixed number of steps (an ONNX graph): requests may ask for that number only
    low, high = sampler.step_limits or (1, opts.max_steps)
    app = create_app(batcher, info, ServeLimits(opts.max_images, high, low), token=args.token)
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
