"""What /openapi.json of ``pmf serve`` states beyond the routes: the request body with the limits of the loaded
model (class range, images per request, steps), and every status the server answers with its media types."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, WithJsonSchema, create_model

GENERATE_DESCRIPTION = (
    "Generate one image per entry of `classes` in one forward pass (or `steps` passes); image i depends only on "
    "(seed, i, its class and the guidance setting), as `pmf sample` computes it. Fields left out or null take the "
    "model's setting (GET /info). Rules between fields that JSON Schema cannot state: t_min <= t_max, where "
    "each is the value given or else the model's default; a request that breaks one gets 422 naming the field. "
    "The body is read as JSON whatever its Content-Type.")

ERROR = {"type": "object", "required": ["detail"], "properties": {
    "detail": {"type": "string", "description": "one line that starts with the field's name"},
    "field": {"type": "string", "description": "the field at fault: classes, classes[3], omega, body, ..."}}}


def request_model(base, class_names: list[str], limits):
    """``base`` (``GenerateRequest``) with the constraints of this server: class indices in [0, num_classes - 1]
    or the texts that name a class (``pmf.class_choice``), 1 to ``limits.max_images`` of them, steps in
    [``limits.min_steps``, ``limits.max_steps``]."""
    from ..class_choice import class_texts

    num_classes = len(class_names)
    # checked by the server's one rule (``class_of``), so that its 422 names the entry; stated here in full
    cls = Annotated[int | str, WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": num_classes - 1},
        {"type": "string", "enum": class_texts(num_classes, class_names)}]})]
    steps = Annotated[int, Field(ge=limits.min_steps, le=limits.max_steps)]
    one = num_classes == 1  # a one-class (unconditional) model: a request may leave its classes out
    return create_model(
        "GenerateRequest", __base__=base,
        classes=(list[cls], Field([0] if one else ..., min_length=1, max_length=limits.max_images, description=(
            f"one class per image: an index in [0, {num_classes - 1}], or a name of GET /info's classes (a "
            f"text as pmf sample --classes reads one class); 1 to {limits.max_images} images"
            + ("; default [0]: one image of the model's one class" if one else "")))),
        steps=(steps | None, Field(None, description=f"sampling steps in [{limits.min_steps}, {limits.max_steps}]; "
                                   "default: the model's")))


def _error(description: str, **extra) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}, **extra}


def auth_responses(auth: bool) -> dict:
    """The 401 of a server started with --token (none without one)."""
    if not auth:
        return {}
    return {401: _error("no or a wrong `Authorization: Bearer TOKEN`",
                        headers={"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}})}


def generate_responses(max_body: int, *, auth: bool) -> dict:
    """The statuses of POST /generate with their media types."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {"description": "the images, in the requested format", "content": {
            "image/png": binary, "application/octet-stream": binary,
            "application/json": {"schema": {"type": "object", "required": ["images", "settings"]}}}},
        413: _error(f"the body is larger than {max_body} bytes"),
        422: _error("a field is missing, of the wrong type, out of range, or breaks a rule between fields"),
        503: _error("the queue is full or the server is stopping: try again after Retry-After seconds",
                    headers={"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}),
        **auth_responses(auth)}


def keep_body_schema(app, path: str, request_body: dict) -> None:
    """Serve ``request_body`` in /openapi.json as pydantic wrote it: FastAPI's OpenAPI models turn integer
    limits into floats (the seed limit 2**63 - 1 would read as 2**63)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            build()["paths"][path]["post"]["requestBody"] = request_body
        return app.openapi_schema

    app.openapi = openapi
