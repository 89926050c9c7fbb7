"""The `/sdapi/v1` routes: FastAPI handlers over the payloads, the job board and the catalog.

Every route answers JSON, as A1111's clients call `.json()` on every answer. With --auth every
route needs HTTP Basic auth with that user and password (A1111's --api-auth), checked in constant
time with wrong guesses slowed (studio.web.slow_failures); without --auth an empty `Basic`
header, which clients send anyway, is ignored. A bad value is a 422 naming the field and value.
"""
from __future__ import annotations

import base64
import binascii
import re

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from studio import metadata
from studio.a1111 import catalog, payloads
from studio.a1111.jobs import Busy, JobBoard
from studio.errors import StudioError
from studio.fields import FIELD

ARGUMENT = re.compile(r"^(\w+)=(.*?) is not allowed")  # studio.errors.bad_argument's messages
EMPTY_LISTS = ("upscalers", "latent-upscale-modes", "sd-vae", "hypernetworks", "embeddings-list")


def basic_auth(check):
    """A dependency that refuses, 401 with a Basic challenge, a request without the right user and password."""
    async def require(request: Request) -> None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if scheme.lower() != "basic" or not await check(user, password):
            raise HTTPException(401, "Incorrect or missing credentials: send HTTP Basic auth with the --auth user.",
                                {"WWW-Authenticate": 'Basic realm="Diffusion Studio API"'})
    return require


def refusal(exc: StudioError) -> JSONResponse:
    """A StudioError as A1111 clients read one: 422 naming the field, or 429 when busy."""
    if isinstance(exc, Busy):
        return JSONResponse({"detail": str(exc)}, status_code=429)
    if not isinstance(exc, payloads.FieldError):
        named = ARGUMENT.match(str(exc))
        field = FIELD.get(named.group(1)) if named else None
        exc = payloads.FieldError((field.a1111 or field.name) if field else "body", named.group(2) if field else None, str(exc))
    return JSONResponse({"detail": exc.detail()}, status_code=422)


def router(manager, settings, board: JobBoard, check=None) -> APIRouter:
    """The routes, bound to one manager and job board; `check(user, password)` if --auth."""
    api = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(basic_auth(check))] if check else [])

    def generate(request: Request, body, img2img: bool):
        try:
            plan = payloads.plan(body, img2img)
            outcome = board.run(plan, request.client.host if request.client else None)
        except StudioError as exc:
            return refusal(exc)
        return payloads.response(body, outcome.results, outcome.pngs, img2img, outcome.stopped)

    @api.post("/txt2img")
    def txt2img(request: Request, body=Body(...)):
        return generate(request, body, img2img=False)

    @api.post("/img2img")
    def img2img(request: Request, body=Body(...)):
        return generate(request, body, img2img=True)

    @api.get("/progress")
    def progress(skip_current_image: bool = False):
        return board.progress(with_image=not skip_current_image)

    @api.post("/interrupt")
    def interrupt():
        board.interrupt()
        return {}

    @api.get("/samplers")
    def samplers():
        return catalog.samplers()

    @api.get("/schedulers")
    def schedulers():
        return catalog.schedules()

    @api.get("/sd-models")
    def sd_models():
        return answer_or_refusal(catalog.sd_models, manager, settings)

    @api.get("/options")
    def options():
        return answer_or_refusal(catalog.options, manager)

    @api.post("/options")
    def set_options(body=Body(...)):
        if not isinstance(body, dict):
            return refusal(payloads.FieldError("body", body, "The options must be a JSON object."))
        if body.get("sd_model_checkpoint") is not None:
            try:
                catalog.switch(body["sd_model_checkpoint"], manager, settings)
            except StudioError as exc:
                return refusal(exc)
        return None  # other options are the studio's own settings: ignored, as unknown keys are

    @api.post("/png-info")
    def png_info(body=Body(...)):
        try:
            picture = payloads.decoded_image(body.get("image") if isinstance(body, dict) else None, "image")
        except StudioError as exc:
            return refusal(exc)
        text = metadata.read_parameters(picture) or ""
        items = {k: v for k, v in picture.info.items() if k != metadata.KEY and isinstance(v, (str, int, float))}
        return {"info": text, "items": items, "parameters": metadata.parse_parameters(text) if text else {}}

    @api.get("/loras")
    def lora_list():  # the LoRAs a prompt's <lora:name:weight> may name, as A1111's Lora extension lists them
        return catalog.lora_list(manager)

    @api.post("/refresh-loras")
    def refresh_loras():
        return None  # the folder is read at every request

    @api.get("/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    for name in EMPTY_LISTS:  # what the clients ask for at start; the studio has none of these
        api.add_api_route(f"/{name}", empty_list, methods=["GET"], name=name)
    return api


def answer_or_refusal(read, *args):
    """`read(*args)`, or its StudioError as an answer (no model, for the moment a switch takes)."""
    try:
        return read(*args)
    except StudioError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503)


def empty_list() -> list:
    return []
