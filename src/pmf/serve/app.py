"""The FastAPI application of ``pmf serve``: POST /generate, GET /info, GET /health and the page at GET /.

Every request is checked before it reaches the batcher; a bad one gets a 422 with one message that names
the field. Nothing here writes files or opens a path taken from a request: the page is read from package
data once, at start-up."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..class_choice import class_of, name_index
from ..errors import PMFError
from ..sampling_setting import SettingError
from ..seeds import SEED_MAX, seed_problem
from .batcher import Batcher, ImageJob, ServerBusy
from .encode import encode
from .model_info import ModelInfo

MAX_BODY = 64 * 1024  # bytes; a request of --max-images classes is far smaller
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for. The one home of these limits: ``request_model`` makes them the
    constraints of the server's request body, which both refuses a request outside them (422 naming the field)
    and states them in /openapi.json; GET /info lists them for the page."""

    max_images: int = 64  # images per request
    max_steps: int = 4  # sampling steps per request
    min_steps: int = 1  # an ONNX graph holds one step count: min_steps = max_steps

    def request_model(self, class_names: list[str]) -> type[GenerateRequest]:
        """``GenerateRequest`` with these limits and the model's classes (``pmf.serve.openapi.request_model``)."""
        from .openapi import request_model

        return request_model(GenerateRequest, class_names, self)

    def check_default(self, setting) -> None:
        """Refuse to start when the model's own step count (a request's default) is outside the limits."""
        if not self.min_steps <= setting.steps <= self.max_steps:
            raise PMFError(f"the model samples with {setting.steps} step(s) by default, outside the request limits "
                           f"[{self.min_steps}, {self.max_steps}]; raise --max-steps")


class RequestProblem(Exception):
    """A request that cannot be served as asked: answered with 422 and ``"field: message"``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class GenerateRequest(BaseModel):
    """The body of POST /generate; fields left out (or null) take the checkpoint's defaults (GET /info). The
    constraints that depend on the server (class range, image count, steps) are added per server by
    ``ServeLimits.request_model``, which both enforces them and states them in /openapi.json."""

    model_config = ConfigDict(extra="forbid", strict=True)

    classes: list[int | str] = Field(description="one class per image: an index, or a name as pmf sample "
                                     "--classes takes it")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="image i uses the noise of (seed, i), as pmf sample --seed")
    omega: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="guidance scale, > 0 (1: no guidance); default: the model's. The network computes in "
        "float32: a value that rounds to 0 there (below 1.4e-45) gets 422")
    t_min: Unit | None = Field(None, description="start of the guidance interval, in [0, 1]; must be <= t_max (the "
                               "one given, else the model's default): a request that breaks this rule between "
                               "fields, which JSON Schema cannot state, gets 422")
    t_max: Unit | None = Field(None, description="end of the guidance interval, in [0, 1]; must be >= t_min (the "
                               "one given, else the model's default), else 422")
    steps: int | None = Field(None, description="sampling steps; default: the model's")
    format: Literal["png", "npz", "json"] = Field("png", description="png: one grid image (image/png); npz: "
                                                  "uint8 images and int64 labels (application/octet-stream); json: "
                                                  "one base64 PNG per image with its settings (application/json)")


def _check(req: GenerateRequest, info: ModelInfo) -> ImageJob:
    """The request (parsed by ``ServeLimits.request_model``'s type, which holds the limits) as a job, or a
    ``RequestProblem`` naming the first bad field: the class names and the setting's own rule, which a schema
    cannot state."""
    k = len(info.class_names)
    index, labels = name_index(info.class_names), []
    for i, c in enumerate(req.classes):
        try:
            labels.append(class_of(c, k, index))
        except PMFError as err:
            raise RequestProblem(f"classes[{i}]", str(err)) from None
    steps = info.setting.steps if req.steps is None else req.steps
    try:  # the setting's own rule (pmf.sampling_setting); fields left out are the checkpoint's
        s = info.setting.replace(omega=req.omega, t_min=req.t_min, t_max=req.t_max, steps=steps)
    except SettingError as err:
        raise RequestProblem(err.field, str(err).removeprefix(f"{err.field} ")) from None
    omega, t_min, t_max = s.omega, s.t_min, s.t_max
    if seed_problem(req.seed):
        raise RequestProblem("seed", seed_problem(req.seed))
    return ImageJob(tuple(labels), req.seed, float(omega), float(t_min), float(t_max), int(steps))


def _validation_message(err: ValidationError | RequestValidationError) -> tuple[str, str]:
    """(field, "field: message") of the first problem pydantic found."""
    first = err.errors()[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    if loc[:1] == ["classes"] and len(loc) > 2:  # an entry of the classes list, not the union member tried
        loc = loc[:2]
    if first.get("type") == "json_invalid":
        return "body", "body: not valid JSON (send a JSON object such as {\"classes\": [3]})"
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    field = field or "body"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (fields: classes, seed, omega, t_min, t_max, steps, format)"
    elif first.get("type") == "missing":
        msg = "required"
    elif first.get("type") == "too_long":  # the classes list: one image per entry
        ctx = first.get("ctx") or {}
        msg = (f"at most {ctx.get('max_length')} images per request (the server's limit, --max-images), got "
               f"{ctx.get('actual_length')}")
    elif field == "body":
        msg = f"send a JSON object such as {{\"classes\": [3]}} ({msg})"
    return field, f"{field}: {msg}"


def parse_request(body: bytes, model: type[GenerateRequest]) -> GenerateRequest:
    """The JSON ``body`` (whatever its content type) as a ``model`` request (``ServeLimits.request_model``), or
    a ``RequestProblem``."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        field, message = _validation_message(err)
        raise RequestProblem(field, message.removeprefix(f"{field}: ")) from None


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past ``MAX_BODY`` bytes without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _info_json(info: ModelInfo, limits: ServeLimits, batcher: Batcher, auth: bool) -> dict:
    s = info.setting
    return {"preset": info.preset, "image_size": info.image_size, "channels": info.channels,
            "num_classes": len(info.class_names), "classes": info.class_names,
            "defaults": {"seed": 0, "omega": s.omega, "t_min": s.t_min, "t_max": s.t_max, "steps": s.steps,
                         "format": "png", "source": s.source},
            "ema": info.ema, "noise_scale": info.noise_scale, "weights": info.weights,
            "limits": {"max_images": limits.max_images, "min_steps": limits.min_steps, "max_steps": limits.max_steps,
                       "omega_min_exclusive": 0,
                       "omega_slider_max": max(8.0, math.ceil(2 * s.omega)), "t_min": 0, "t_max": 1,
                       "seed_max": SEED_MAX, "formats": ["png", "npz", "json"]},
            "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                         "max_queue": batcher.max_queue},
            "auth": auth, "version": __version__}


def _load_static() -> dict[str, tuple[bytes, str]]:
    root = resources.files(__package__) / "static"
    return {route: ((root / name).read_bytes(), media) for route, (name, media) in STATIC.items()}


async def on_invalid(request, err: RequestValidationError):
    field, message = _validation_message(err)
    return JSONResponse({"detail": message, "field": field}, status_code=422)


async def on_problem(request, err: RequestProblem):
    return JSONResponse({"detail": str(err), "field": err.field}, status_code=422)


async def on_busy(request, err: ServerBusy):
    return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})


async def on_unauthorized(request, err):
    return JSONResponse({"detail": "this server needs Authorization: Bearer TOKEN"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


async def on_too_large(request, err):
    return JSONResponse({"detail": f"body: larger than {MAX_BODY} bytes", "field": "body"}, status_code=413)


class Routes:
    """The handlers of GET /health, GET /info and POST /generate for one batcher, model and token."""

    def __init__(self, batcher: Batcher, info: ModelInfo, limits: ServeLimits, token: str | None, request_type):
        self.batcher, self.info, self.limits, self.token = batcher, info, limits, token
        self.request_type = request_type  # GenerateRequest with this model's limits

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise _Unauthorized()

    async def health(self):
        b = self.batcher
        return {"status": "ok", "queued": b.queued, "batches": sum(b.batch_sizes.values()),
                "images": sum(n * c for n, c in b.batch_sizes.items()), "pass_seconds": round(b.pass_seconds, 3)}

    async def get_info(self):
        return _info_json(self.info, self.limits, self.batcher, self.token is not None)

    async def generate(self, request: Request):
        t0 = time.perf_counter()
        req = parse_request(await read_body(request), self.request_type)
        job = _check(req, self.info)
        images = await self.batcher.generate(job)
        big = images.size > 256 * 256 * 3
        body, media = await asyncio.to_thread(encode, images, job, req.format, self.info) if big else \
            encode(images, job, req.format, self.info)
        ms = (time.perf_counter() - t0) * 1000
        headers = {"Server-Timing": f"generate;dur={ms:.1f}"}
        if isinstance(body, dict):
            return JSONResponse({**body, "time_ms": round(ms, 2)}, headers=headers)
        return Response(body, media_type=media, headers=headers)


def _add_static(app: FastAPI) -> None:
    """The page and its files (read from package data once), outside /openapi.json."""
    for route, (content, media) in _load_static().items():
        def page(content=content, media=media):
            return Response(content, media_type=media)
        app.get(route, include_in_schema=False, response_class=HTMLResponse if route == "/" else Response)(page)


def create_app(batcher: Batcher, info: ModelInfo, limits: ServeLimits = ServeLimits(), *,
               token: str | None = None) -> FastAPI:
    """The application; it starts ``batcher`` when it starts and stops it when it shuts down. With
    ``token``, /info and /generate need ``Authorization: Bearer TOKEN`` (/health and the page do not)."""
    from .openapi import GENERATE_DESCRIPTION, auth_responses, generate_responses, keep_body_schema

    limits.check_default(info.setting)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="pmf serve", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    for error, handler in ((RequestValidationError, on_invalid), (RequestProblem, on_problem), (ServerBusy, on_busy),
                           (_Unauthorized, on_unauthorized), (_TooLarge, on_too_large)):
        app.add_exception_handler(error, handler)
    routes = Routes(batcher, info, limits, token, limits.request_model(info.class_names))
    auth = [Depends(routes.authorize)]
    app.get("/health")(routes.health)
    app.get("/info", dependencies=auth, responses=auth_responses(token is not None))(routes.get_info)
    body_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": routes.request_type.model_json_schema()}}}}
    app.post("/generate", dependencies=auth, openapi_extra=body_schema, description=GENERATE_DESCRIPTION,
             responses=generate_responses(MAX_BODY, auth=token is not None))(routes.generate)
    keep_body_schema(app, "/generate", body_schema["requestBody"])
    _add_static(app)
    return app


class _Unauthorized(Exception):
    pass


class _TooLarge(Exception):
    pass
