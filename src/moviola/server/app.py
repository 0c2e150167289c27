"""The HTTP server: OpenAI's Videos API under ``/v1``, an admin API for keys, the studio at ``/``.

    moviola serve --port 8000 --workers 1        # see ``moviola serve --help``
    app = create_app(ServerConfig(storage="data"))  # for uvicorn or tests

The contract is docs/API.md, checked against the official ``openai`` SDK. Every error is shaped
like OpenAI's, ``{"error": {"message", "type", "param", "code"}}``, with the status code the SDK maps
to its exception classes (400 BadRequest, 401 Authentication, 403 PermissionDenied, 404 NotFound,
413 payload too large, 429 RateLimit with ``retry-after``, 500/503 InternalServer); FastAPI's own
validation errors are turned into 400s naming the parameter.

Handlers are plain functions run in FastAPI's thread pool, each thread with its own database
connection, so the event loop never waits on the database. Every request under ``/v1`` is written to
the audit log (key name, action, video id or the key an admin acted on, status, milliseconds) after it is answered, except keyless
floods refused with 429; rows older than ``audit_days`` are pruned by the sweep.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import params as fastapi_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from moviola.images import IMAGE_DECODE_SIDE, image_formats, open_image, pil_to_rgb
from moviola.media import IndirectFileError, open_video_file
from moviola.server import jobs, keys
from moviola.server.db import Database, sqlite_url
from moviola.server.generate import DEFAULT_MAX_SECONDS, SORA_MODELS, ModelInfo, RequestProblem, seconds_text
from moviola.server.schemas import (ERRORS, ErrorResponse, FeedbackBody, KeyBody, RemixBody, StoryboardBody, Video,
                                    VideoDeleted, VideoList)
from moviola.server.storage import VARIANTS, Storage

STUDIO_DIR = Path(__file__).parent / "studio"
MAX_SOURCE_PIXELS = 4096 * 4096  # a source video's (or animated image's) frame, read from its header
# Uploads decoded at once (checked, normalised): each can take a few hundred MB, and FastAPI runs 40 at a time
DECODING = threading.BoundedSemaphore(2)
# The studio loads nothing but its own files: no inline script or style, no other origin. Clips play from
# blob: URLs (a <video src> cannot carry the key) and image cards preview as blob: and travel as data: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())]


@dataclass
class ServerConfig:
    """Everything ``moviola serve`` takes; the workers it starts get the same db, storage and model."""

    storage: str = "moviola-data"
    db: str | None = None  # default: sqlite file STORAGE/moviola.db
    model: str | None = None  # model folder (default: the shipped model)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    steps: int | None = None  # sampler steps for every job (default: the model's)
    guidance: float | None = None
    sampler: str | None = None
    poll_after_ms: int = 1000  # the openai-poll-after-ms header on unfinished videos
    ttl_seconds: float = 24 * 3600.0  # completed videos' files are deleted this long after (0: never)
    lease_seconds: float = 30.0  # for the workers it starts
    worker_threads: int = 0
    sweep_seconds: float = 60.0  # how often expired files are cleaned up
    max_image_mb: float = 20.0
    max_video_mb: float = 200.0
    max_seconds: float = DEFAULT_MAX_SECONDS  # the longest video a request may ask for (capped by the model's)
    audit_days: float = 90.0  # audit rows older than this are removed by the sweep (0: kept for ever)
    keyless_per_minute: int = 120  # /v1 requests without a valid key from one address, a minute, before 429

    def db_url(self) -> str:
        return self.db or sqlite_url(Path(self.storage) / "moviola.db")


# --- errors -----------------------------------------------------------------------------------------

class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}


def _error_response(status: int, message: str, type: str, code: str | None, param: str | None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


class _FailedAuth:
    """Requests without a valid key per client address over the last minute (a bounded table: the oldest
    addresses go first): past the limit they are answered 429 and not written to the audit log, which a flood
    had grown by GBs a day. Each is still looked up (keys are 256-bit random: guessing needs no slowing).
    Behind a proxy, the address is the proxy's unless uvicorn trusts its forwarded headers
    (FORWARDED_ALLOW_IPS); ``limit`` 0 turns this off."""

    def __init__(self, limit: int, addresses: int = 10_000):
        self.limit, self.addresses = limit, addresses
        self.seen: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self.seen.get(address, ()) if now - t < 60.0]
        self.seen.pop(address, None)
        if times:
            self.seen[address] = times  # re-inserted: the dict's order is by last use
        return times

    def over(self, address: str) -> bool:
        with self.lock:
            return len(self._recent(address, time.time())) >= self.limit

    def add(self, address: str) -> None:
        now = time.time()
        with self.lock:
            self.seen[address] = self._recent(address, now) + [now]
            while len(self.seen) > self.addresses:
                self.seen.pop(next(iter(self.seen)))


def _api_request(scope: dict) -> bool:
    """An HTTP request to the keyed API (/v1/..., not its public OpenAPI schema)."""
    path = scope.get("path", "")
    return scope["type"] == "http" and path.startswith("/v1/") and path != "/v1/openapi.json"


def not_found(video_id: str) -> APIError:
    return APIError(404, f"no video with id {_shown(video_id)}", code="not_found", param="video_id")


def _shown(text: str, limit: int = 80) -> str:
    """A value a client sent, quoted for an error message, cut short (a 5,000-character id came back whole)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


# --- the app ----------------------------------------------------------------------------------------

def create_app(cfg: ServerConfig) -> FastAPI:
    storage = Storage(cfg.storage)
    db = Database(cfg.db_url())
    from moviola import DEFAULT_MODEL_DIR

    model = ModelInfo.from_dir(cfg.model or DEFAULT_MODEL_DIR, cap_seconds=cfg.max_seconds)
    bearer = HTTPBearer(auto_error=False, description="An API key made with `moviola keys create`.")
    stop_sweeping = threading.Event()

    pruned = [0.0]  # when the audit log and the idempotency tokens were last pruned

    def sweeper() -> None:
        while not stop_sweeping.wait(cfg.sweep_seconds):
            try:
                jobs.sweep_expired(db, storage)
                if time.time() - pruned[0] > 3600:  # hourly: indexed deletes
                    if cfg.audit_days > 0:
                        keys.prune_audit(db, cfg.audit_days * 86400.0)
                    jobs.prune_idempotency(db)
                    jobs.sweep_orphans(db, storage)
                    pruned[0] = time.time()
            except Exception as e:  # never let housekeeping take the server down
                print(f"moviola serve: expiry sweep failed: {e}", flush=True)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        t = threading.Thread(target=sweeper, daemon=True, name="moviola-sweeper")
        t.start()
        yield
        stop_sweeping.set()

    # No /docs page: Swagger UI loads its scripts from a CDN, and a Moviola server works offline.
    app = FastAPI(title="Moviola", version="0.1.0", lifespan=lifespan, openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="OpenAI's Videos API, served by Moviola. Use the official SDK with "
                              "`base_url=http://HOST:PORT/v1`.")
    app.state.db, app.state.storage, app.state.model, app.state.cfg = db, storage, model, cfg

    # --- errors ----------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, e: APIError):
        return _error_response(e.status, e.message, e.type, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower() or "none"
        route = request.scope.get("route")
        takes_form = isinstance(getattr(getattr(route, "body_field", None), "field_info", None), fastapi_params.Form)
        if takes_form and content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            msg, param = f"this endpoint takes multipart/form-data, not {content_type}", None
        elif first.get("type") == "json_invalid":
            msg, param = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', msg)})", None
        elif first.get("type") == "extra_forbidden":  # the code an unknown form field gets (known_form_fields)
            return _error_response(400, f"unknown parameter {param!r}", "invalid_request_error", "unknown_parameter",
                                   param)
        elif first.get("type") == "missing":
            sent = takes_form and param is not None and param in (await request.form())  # sent, but empty
            msg = f"{param} must not be empty" if sent else f"missing required parameter {param!r}"
        elif param:
            msg = f"invalid value for {param!r}: {msg}"
        return _error_response(400, msg, "invalid_request_error", "invalid_value", param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = (f"no route {request.method} {request.url.path}" if e.status_code in (404, 405)
               else str(e.detail))
        return _error_response(e.status_code, msg, "invalid_request_error", code, None,
                               getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, e: Exception):
        from moviola.server.db import DatabaseError

        if isinstance(e, DatabaseError) or type(e).__module__.startswith(("sqlite3", "psycopg")):
            return _error_response(503, f"database unavailable: {e}", "server_error", "database_unavailable",
                                   None, {"retry-after": "1"})
        if isinstance(e, OSError):  # the storage (a full disk storing an upload): not a crash; no server path
            return _error_response(503, f"storage unavailable: {e.strerror or type(e).__name__}", "server_error",
                                   "storage_error", None, {"retry-after": "30"})
        import traceback

        traceback.print_exc()
        return _error_response(500, f"internal error ({type(e).__name__}); see the server log", "server_error",
                               "internal_error", None)

    # --- audit -----------------------------------------------------------------------------------

    class Audit:
        """Pure ASGI middleware: writes one audit row per /v1 request once the response has been sent, so
        the client never waits for it (the row lands a millisecond after the answer)."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if not _api_request(scope):
                return await self.inner(scope, receive, send)
            path = scope["path"]
            t0 = time.perf_counter()
            scope.setdefault("state", {})["audit_t0"] = t0  # queue() audits a job it creates itself
            status = [500]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, send_status)
            finally:
                route = scope.get("route")
                st = scope.get("state") or {}
                # an unknown route's path, cut short: a 60,000-character path had been stored whole, per request
                action = getattr(route, "name", None) or f"{scope.get('method')} {path[:120]}"
                video_id = st.get("video_id") or (scope.get("path_params") or {}).get("video_id")
                try:
                    # not a keyless flood turned away with 429 (KeyGate), nor a created job (queue() wrote its
                    # row in the job's own transaction)
                    if not st.get("no_audit") and not st.get("audited"):
                        await run_in_threadpool(keys.audit, db, key_name=st.get("key_name"), action=action,
                                                video_id=video_id, target=st.get("audit_target"), status=status[0],
                                                ms=(time.perf_counter() - t0) * 1000)
                except Exception as e:
                    print(f"moviola serve: audit write failed: {e}", flush=True)

    # --- auth ------------------------------------------------------------------------------------

    def authenticate(token: str | None, state: dict) -> dict:
        """The key row for a bearer token, or an APIError 401. No cache: a revoked key fails on its next
        request. Records the key's name in the request state for the audit row."""
        if not token:
            raise APIError(401, "no API key: send 'Authorization: Bearer KEY' (make one with `moviola keys "
                                "create --name NAME`)", code="invalid_api_key")
        key = keys.lookup(db, token)
        if key is None:
            raise APIError(401, "incorrect API key", code="invalid_api_key")
        state["key_name"] = key["name"]
        if key["revoked_at"] is not None:
            raise APIError(401, f"this API key ({key['prefix']}...) was revoked", code="invalid_api_key")
        return key

    failed_auth = _FailedAuth(cfg.keyless_per_minute)

    class KeyGate:
        """Pure ASGI middleware: every /v1 request's key is checked before its body is read, so a request
        without a valid key gets 401 whatever it sends (not a 400 about a body it had no right to send)
        and the server never parses uploads for it. The key found is handed to `current_key`."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if not _api_request(scope):
                return await self.inner(scope, receive, send)
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            state = scope.setdefault("state", {})
            try:
                state["api_key"] = await run_in_threadpool(
                    authenticate, token.strip() if scheme.lower() == "bearer" else None, state)
            except APIError as e:
                address = (scope.get("client") or ("?", 0))[0]
                if e.status == 401 and cfg.keyless_per_minute > 0 and failed_auth.over(address):
                    # A flood without a valid key from one address (a 60,000-character path per request had
                    # grown the audit log by GBs a day): 429, and no audit row for it. Valid keys pass as ever.
                    state["no_audit"] = True
                    e = APIError(429, f"too many requests without a valid key from this address (more than "
                                      f"{cfg.keyless_per_minute} a minute); retry later", type="rate_limit_error",
                                 code="rate_limit_exceeded",
                                 # the SDK would sleep a minute and retry twice before saying the key is wrong
                                 headers={"retry-after": "60", "x-should-retry": "false"})
                elif e.status == 401:
                    failed_auth.add(address)
                response = _error_response(e.status, e.message, e.type, e.code, e.param, e.headers)
                return await response(scope, receive, send)
            except Exception as e:  # the database is down: the same answer the routes give
                response = _error_response(503, f"database unavailable: {e}", "server_error",
                                           "database_unavailable", None, {"retry-after": "1"})
                return await response(scope, receive, send)
            return await self.inner(scope, receive, send)

    upload_mb = max(cfg.max_video_mb, cfg.max_image_mb) + 1.0  # a multipart request: the file and its fields
    board_mb = 4 / 3 * 4 * cfg.max_image_mb + 1.0  # a storyboard's cards: base64 images, together 4 files' worth

    def body_limit(scope) -> float:
        """Bytes a request may send: an upload's file, a storyboard's images, else 1 MB of JSON or form."""
        path, method = scope.get("path", ""), scope.get("method", "")
        if method == "POST" and path == "/v1/videos/storyboards":
            return board_mb * 2**20
        if method == "POST" and path.startswith("/v1/videos") and path.count("/") <= 3:  # create, extensions, edits
            # (a remix, /v1/videos/ID/remix, is JSON: 1 MB)
            return upload_mb * 2**20
        return 2**20

    class BodyLimit:
        """Pure ASGI middleware: a request body over its route's limit is refused with 413, by its Content-Length
        before any of it is read, or as it streams in (a 300 MB JSON body had been parsed whole for a 400, a
        1.2 GB upload written to disk before its 413)."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            limit = body_limit(scope)
            too_big = _error_response(413, f"the request body is larger than this route takes "
                                           f"({limit / 2**20:g} MB)", "invalid_request_error", "request_too_large", None)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return await too_big(scope, receive, send)
            seen, over, started = [0], [False], [False]

            async def counted():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        over[0] = True
                        return {"type": "http.disconnect"}  # the app stops reading; the answer is ours
                return message

            async def watched(message):
                if over[0]:
                    return  # the app's answer to a body cut short is not sent: the 413 below is
                if message["type"] == "http.response.start":
                    started[0] = True
                await send(message)

            try:
                await self.inner(scope, counted, watched)
            except Exception:
                if not over[0]:
                    raise
            if over[0] and not started[0]:
                await too_big(scope, receive, send)

    class SecurityHeaders:
        """Pure ASGI middleware, the outermost: every response, the gates' own refusals included, says not to
        frame it on other sites, not to sniff its content type, to send no referrer with its URLs, and (the
        content security policy) to run or load nothing that is not the server's own."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)

            async def headed(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
                await send(message)

            await self.inner(scope, receive, headed)

    app.add_middleware(BodyLimit)
    app.add_middleware(KeyGate)
    app.add_middleware(Audit)  # requests the gate turns away are audited too
    app.add_middleware(SecurityHeaders)

    def current_key(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        key = getattr(request.state, "api_key", None)  # checked by KeyGate moments ago
        if key is not None:
            return key
        return authenticate(creds.credentials if creds else None, request.scope.setdefault("state", {}))

    async def known_form_fields(request: Request) -> None:
        """A form field the route does not take is an error naming it (a misspelt "second" would have
        made a clip of the default length). FastAPI has read the form by now; request.form() returns it."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        route = request.scope.get("route")
        if route is None or ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return  # the body's validation says what is wrong with it
        allowed = {f.alias for f in route.dependant.body_params}
        unknown = sorted(set((await request.form()).keys()) - allowed)
        if unknown:
            raise APIError(400, f"unknown parameter {unknown[0]!r} (this endpoint takes {', '.join(sorted(allowed))})",
                           code="unknown_parameter", param=unknown[0])

    def admin_key(key: dict = Depends(current_key)) -> dict:
        if not key["admin"]:
            raise APIError(403, "this needs an admin key (moviola keys create --name NAME --admin)",
                           type="permission_error", code="admin_required")
        return key

    # --- helpers ---------------------------------------------------------------------------------

    def video_response(row: dict, status: int = 200) -> JSONResponse:
        headers = {}
        if row["status"] in ("queued", "in_progress"):
            headers["openai-poll-after-ms"] = str(cfg.poll_after_ms)
        return JSONResponse(jobs.to_video(row), status_code=status, headers=headers)

    def problem(e: RequestProblem) -> APIError:
        return APIError(400, str(e), code=e.code, param=e.param)

    def sampler_params(seed: int | None) -> dict:
        return {"fps": model.fps, "seed": secrets.randbelow(2**31) if seed is None else seed, "seed_drawn": seed is None,
                "steps": cfg.steps or model.steps,
                "guidance": model.guidance if cfg.guidance is None else cfg.guidance,
                "sampler": cfg.sampler or model.sampler, "negative_prompt": ""}

    def parse_seed(text: str | None) -> int | None:
        if text in (None, ""):
            return None
        s = int(text) if isinstance(text, str) and text.strip().isascii() and text.strip().isdigit() else -1
        if not 0 <= s < 2**31:  # plain digits ("1_0" and "+7" had been taken by int())
            raise APIError(400, f"seed must be an integer from 0 to {2**31 - 1}, got {text!r}",
                           code="invalid_value", param="seed")
        return s

    def check_prompt(prompt: str) -> str:
        prompt = (prompt or "").strip()
        if not prompt:
            raise APIError(400, "prompt must not be empty", code="invalid_value", param="prompt")
        if len(prompt) > 4000:
            raise APIError(400, "prompt is longer than 4000 characters", code="invalid_value", param="prompt")
        return prompt

    def read_upload(f: UploadFile, limit_mb: float, param: str) -> bytes:
        data = f.file.read(int(limit_mb * 2**20) + 1)
        if len(data) > limit_mb * 2**20:
            raise APIError(413, f"{param} is larger than {limit_mb:g} MB", code="file_too_large", param=param)
        if not data:
            raise APIError(400, f"{param} is an empty file", code="invalid_file", param=param)
        return data

    def image_png(data: bytes, param: str) -> bytes:
        """An image of IMAGE_FORMATS -> PNG bytes (RGB), or a 400 naming the problem."""
        from PIL import Image, UnidentifiedImageError

        try:
            # A JPEG's size here is what it decodes to (at most 1/8 of it, never below IMAGE_DECODE_SIDE a side):
            # a 48-megapixel phone photo had been refused as "too many pixels"
            with DECODING, open_image(io.BytesIO(data), max_side=IMAGE_DECODE_SIDE) as im:
                if im.width * im.height > 40_000_000:
                    raise APIError(400, f"{param} is {im.width}x{im.height}: too many pixels",
                                   code="invalid_file", param=param)
                if min(im.width, im.height) < 8:  # as the pipeline's own check, but before anything is queued
                    raise APIError(400, f"{param} is {im.width}x{im.height}: too small to condition on (8 px a "
                                        "side at least)", code="invalid_file", param=param)
                rgb = Image.fromarray(pil_to_rgb(im))
                # Stored no larger than the pipeline decodes it, its shorter side at most IMAGE_DECODE_SIDE (what
                # a cover crop keeps): the worker and a storyboard's 32 cards never hold a 40-megapixel picture
                # (and the longer one at most 4x that: 32 cards of 36000x1100 had each been kept 33513x1024)
                f = min(IMAGE_DECODE_SIDE / min(rgb.size), 4 * IMAGE_DECODE_SIDE / max(rgb.size))
                if f < 1:
                    rgb = rgb.resize((max(1, round(rgb.width * f)), max(1, round(rgb.height * f))),
                                     Image.Resampling.LANCZOS, reducing_gap=3.0)
                out = io.BytesIO()
                rgb.save(out, format="PNG")
                return out.getvalue()
        except UnidentifiedImageError:
            raise APIError(400, f"{param} is not a readable image: not an image format this server reads (PNG, "
                                "JPEG, WebP, GIF, BMP, TIFF, AVIF...)", code="invalid_file", param=param) from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise APIError(400, f"{param} is not a readable image (PNG, JPEG, WebP...): {e}",
                           code="invalid_file", param=param) from None

    def data_url_bytes(url: str, param: str) -> bytes:
        if not url.startswith("data:"):
            raise APIError(400, f"{param}: this server fetches nothing from the network; upload the image as a "
                                "file or send it as a base64 data: URL", code="unsupported", param=param)
        try:
            header, b64 = url.split(",", 1)
            if ";base64" not in header:
                raise ValueError("not base64")
            return base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise APIError(400, f"{param} is not a valid base64 data: URL", code="invalid_value",
                           param=param) from None

    def check_video_file(path: Path, param: str) -> int:
        """A 400 unless ``path`` is a video whose first frame decodes, of at most MAX_SOURCE_PIXELS; returns its
        display rotation in quarter turns (a phone's portrait clip is stored landscape, turned 1 or 3)."""
        import av

        from PIL import Image, UnidentifiedImageError

        # FFmpeg reads still and animated images as video too, and decodes a frame whole: a 1 MB PNG of
        # 16000x16000 had cost the API 1 GB. Their size is in the header, so check it before decoding anything.
        try:
            with Image.open(path, formats=image_formats()) as im:
                size = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            size = None
        if size is not None and size[0] * size[1] > MAX_SOURCE_PIXELS:
            raise APIError(400, f"{param} is {size[0]}x{size[1]}: too many pixels", code="invalid_file", param=param)
        try:
            with DECODING, open_video_file(path) as c:
                if not c.streams.video:
                    raise APIError(400, f"{param} has no video stream", code="invalid_file", param=param)
                cc = c.streams.video[0].codec_context
                if (cc.width or 0) * (cc.height or 0) > MAX_SOURCE_PIXELS:
                    raise APIError(400, f"{param} is {cc.width}x{cc.height}: too many pixels", code="invalid_file",
                                   param=param)
                first = next(iter(c.decode(video=0)))
                return round((getattr(first, "rotation", 0) or 0) / 90) % 4
        except APIError:
            raise
        except IndirectFileError as e:
            raise APIError(400, f"{param} is not a readable video: {e}", code="invalid_file", param=param) from None
        except (av.FFmpegError, OSError, StopIteration) as e:
            why = getattr(e, "strerror", None) or type(e).__name__  # FFmpeg's words, not the server's path
            raise APIError(400, f"{param} is not a readable video: {why}", code="invalid_file", param=param) from None

    def source_video(key: dict, video_id: str, param: str) -> dict:
        row = jobs.get_job(db, key["id"], video_id)
        if row is None:
            raise APIError(404, f"no video with id {_shown(video_id)}", code="not_found", param=param)
        if row["status"] != "completed":
            raise APIError(400, f"video {video_id} is {row['status']}; only completed videos can be used as a "
                                "source", code="video_not_ready", param=param)
        if row["assets_removed_at"] is not None or (row["expires_at"] or math.inf) <= time.time():
            # expired: refused from its expires_at on, as a download is, not only once the sweep has run
            raise APIError(404, f"video {video_id} has expired; its files were deleted", code="video_expired",
                           param=param)
        return row

    def idempotency_key(request: Request) -> str | None:
        token = request.headers.get("idempotency-key")
        if token is None:
            return None
        if not 1 <= len(token) <= 255 or not token.isprintable():
            raise APIError(400, "the Idempotency-Key header must be 1 to 255 printable characters (a UUID, say)",
                           code="invalid_value", param="Idempotency-Key")
        return token

    def request_fingerprint(kind: str, prompt: str, params: dict) -> str:
        """What a request asked for, for Idempotency-Key: everything in its parameters but where its files were
        stored (each try stores its own) and a seed the server drew (each try draws its own)."""
        def asked(v):
            if isinstance(v, dict):
                return {k: asked(x) for k, x in v.items() if not k.endswith("_path")}
            return [asked(x) for x in v] if isinstance(v, list) else v

        p = asked(params)
        if p.pop("seed_drawn", False):
            p.pop("seed", None)
        return hashlib.sha256(json.dumps([kind, prompt, p], sort_keys=True, default=str).encode()).hexdigest()

    def queue(request: Request, key: dict, *, video_id: str, kind: str, prompt: str, seconds: float,
              width: int, height: int, params: dict, cost: float, remixed_from: str | None = None) -> JSONResponse:
        """Queue the job (its uploads already stored under ``video_id``) and answer with its Video object; the
        uploads go if it is not queued, or if an Idempotency-Key names a job queued before (answered instead).
        A refused request's audit row names no video (the id it would have had never existed)."""
        params = {**params, "width": width, "height": height, "seconds": seconds}
        try:
            route = request.scope.get("route")
            t0 = request.scope.get("state", {}).get("audit_t0", time.perf_counter())
            row, new = jobs.insert_job(db, key, video_id=video_id, kind=kind, prompt=prompt, model=model.name,
                                       seconds=seconds_text(seconds), size=f"{width}x{height}", params=params,
                                       cost_seconds=cost, remixed_from=remixed_from,
                                       idempotency_key=idempotency_key(request),
                                       fingerprint=request_fingerprint(kind, prompt, params),
                                       audit=(key["name"], getattr(route, "name", "videos.create"),
                                              (time.perf_counter() - t0) * 1000))
        except keys.KeyRevoked as e:
            storage.remove_all(video_id)
            raise APIError(401, str(e), code="invalid_api_key") from None
        except keys.LimitExceeded as e:
            storage.remove_all(video_id)
            if e.kind == "too_large":
                raise APIError(400, str(e), code="quota_too_small", param="seconds") from None
            raise APIError(429, str(e), type="requests" if e.kind == "rate" else "insufficient_quota",
                           code="rate_limit_exceeded" if e.kind == "rate" else "insufficient_quota",
                           headers={"retry-after": str(int(e.retry_after + 0.999))}) from None
        except jobs.IdempotencyConflict as e:
            storage.remove_all(video_id)
            raise APIError(400, str(e), code="idempotency_key_reused", param="Idempotency-Key") from None
        except BaseException:  # nothing was committed (the row is read inside the transaction)
            storage.remove_all(video_id)
            raise
        if new:
            request.state.audited = True  # its row was written with the job
        else:  # a retry of a request already queued: its job, and this retry's uploads dropped
            storage.remove_all(video_id)
            request.state.video_id = row["id"]
        return video_response(row)

    def copy_source(video_id: str, src: dict) -> str:
        """A private copy of the source, so deleting or expiring it cannot break the queued job."""
        dst = storage.upload_dir(video_id) / "source.mp4"
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".source.tmp-{secrets.token_hex(4)}.mp4")
        try:
            shutil.copyfile(storage.asset(src["assets"], "video"), tmp)
        except FileNotFoundError:  # deleted or expired a moment ago
            storage.remove_all(video_id)
            raise not_found(src["id"]) from None
        tmp.replace(dst)
        return storage.relative(dst)

    # --- the Videos API --------------------------------------------------------------------------

    @app.post("/v1/videos", name="videos.create", response_model=Video, responses=ERRORS,
              dependencies=[Depends(known_form_fields)],
              summary="Create a video (multipart form, optional input_reference image)")
    def create_video(request: Request, key: dict = Depends(current_key),
                     prompt: str = Form(..., max_length=100_000), model_name: str | None = Form(None, alias="model"),
                     seconds: str | None = Form(None), size: str | None = Form(None),
                     seed: str | None = Form(None, description="Moviola extra: the sampler's seed"),
                     input_reference: UploadFile | None = File(None),
                     input_reference_url: str | None = Form(None, alias="input_reference[image_url]"),
                     input_reference_file_id: str | None = Form(None, alias="input_reference[file_id]")):
        prompt = check_prompt(prompt)
        try:
            model.parse_model(model_name)
            w, h = model.parse_size(size)
            s = model.parse_seconds(seconds)
        except RequestProblem as e:
            raise problem(e) from None
        params = sampler_params(parse_seed(seed))
        video_id = jobs.new_video_id()
        if input_reference_file_id:
            raise APIError(400, "input_reference.file_id: this server has no Files API; upload the image itself",
                           code="unsupported", param="input_reference")
        raw = None
        if input_reference is not None:
            raw = read_upload(input_reference, cfg.max_image_mb, "input_reference")
        elif input_reference_url:
            raw = data_url_bytes(input_reference_url, "input_reference")
        image = image_png(raw, "input_reference") if raw is not None else None
        if image is not None:
            try:
                model.require_frames("image-to-video (input_reference)", "input_reference")
            except RequestProblem as e:
                raise problem(e) from None
            params["input_path"] = storage.relative(storage.save_upload(video_id, "input.png", image))
            params["input_sha256"] = hashlib.sha256(raw).hexdigest()  # provenance: the file it started from
        return queue(request, key, video_id=video_id, kind="create", prompt=prompt, seconds=s, width=w, height=h,
                     params=params, cost=s)

    @app.get("/v1/videos", name="videos.list", response_model=VideoList, responses=ERRORS)
    def list_videos(request: Request, key: dict = Depends(current_key), after: str | None = Query(None),
                    limit: int = Query(20, ge=1, le=100), order: Literal["asc", "desc"] = Query("desc")):
        try:
            rows, more = jobs.list_jobs(db, key["id"], after=after, limit=limit, order=order)
        except LookupError:
            raise APIError(400, f"after: no video with id {_shown(after)} to continue from", code="invalid_value",
                           param="after") from None
        data = [jobs.to_video(r) for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.get("/v1/videos/{video_id}", name="videos.retrieve", response_model=Video, responses=ERRORS)
    def retrieve_video(video_id: str, key: dict = Depends(current_key)):
        row = jobs.get_job(db, key["id"], video_id)
        if row is None:
            raise not_found(video_id)
        return video_response(row)

    @app.delete("/v1/videos/{video_id}", name="videos.delete", response_model=VideoDeleted, responses=ERRORS)
    def delete_video(video_id: str, key: dict = Depends(current_key)):
        if not jobs.delete_job(db, storage, key["id"], video_id):
            raise not_found(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos/{video_id}/content", name="videos.content", responses={
        200: {"content": {"video/mp4": {}, "image/webp": {}, "image/jpeg": {}}}, **ERRORS},
        response_class=Response)
    def video_content(video_id: str, key: dict = Depends(current_key),
                      variant: Literal["video", "thumbnail", "spritesheet"] = Query("video")):
        row = jobs.get_job(db, key["id"], video_id)
        if row is None:
            raise not_found(video_id)
        if row["status"] != "completed":
            msg = (f"video {video_id} failed: {row['error_message']}" if row["status"] == "failed"
                   else f"video {video_id} is {row['status']} ({row['progress']}%); its content is ready "
                        "once status is completed")
            raise APIError(400, msg, code="video_not_ready", param="video_id")
        if row["expires_at"] is not None and row["expires_at"] <= time.time():
            jobs.sweep_expired(db, storage)
            row = jobs.get_job(db, key["id"], video_id) or row
        if row["assets_removed_at"] is not None:
            raise APIError(404, f"video {video_id} expired at {int(row['expires_at'])}; its files were deleted",
                           code="video_expired", param="video_id")
        path = storage.asset(row["assets"], variant)
        try:
            data = path.read_bytes()  # whole file: no race with a delete that lands mid-stream
        except FileNotFoundError:
            now_row = jobs.get_job(db, key["id"], video_id)
            if now_row is None:  # deleted while this request ran
                raise not_found(video_id) from None
            if now_row["assets_removed_at"] is not None or (now_row["expires_at"] or math.inf) <= time.time():
                raise APIError(404, f"video {video_id} expired; its files were deleted", code="video_expired",
                               param="video_id") from None
            raise APIError(500, f"video {video_id} is completed but its {variant} file is missing from the "
                                "server's storage (removed by hand?); make it again", type="server_error",
                           code="asset_missing", param="video_id") from None
        return Response(data, media_type=VARIANTS[variant][1],
                        headers={"etag": f'"{row["content_hash"]}"'} if variant == "video" else None)

    @app.post("/v1/videos/{video_id}/remix", name="videos.remix", response_model=Video, responses=ERRORS)
    def remix_video(request: Request, video_id: str, body: RemixBody, key: dict = Depends(current_key)):
        prompt = check_prompt(body.prompt)
        src = source_video(key, video_id, "video_id")
        sp = json.loads(src["params"])
        try:
            strength = model.parse_strength(body.strength)
            model.check_source(float(sp["seconds"]), "remix", "video_id")
        except RequestProblem as e:
            raise problem(e) from None
        new_id = jobs.new_video_id()
        params = {**sampler_params(body.seed if body.seed is not None else sp["seed"]), "strength": strength,
                  "source_video_id": video_id, "source_seed": sp["seed"], "source_path": copy_source(new_id, src),
                  "source_sha256": src["content_hash"]}  # provenance outlives the source's expiry
        return queue(request, key, video_id=new_id, kind="remix", prompt=prompt, seconds=float(sp["seconds"]),
                     width=sp["width"], height=sp["height"], params=params, cost=float(sp["seconds"]),
                     remixed_from=video_id)

    def source_from_form(request: Request, key: dict, video: UploadFile | None, video_ref: str | None,
                         new_id: str, size: str | None) -> tuple[dict, float, tuple[int, int]]:
        """The source of an extension or edit: (params naming it, its seconds, the size to make).

        A stored video (``video[id]``) keeps its size unless ``size`` asks for another; an upload (real
        footage of any size and frame rate) is made at ``size``, else at the trained size nearest its
        aspect ratio. The abilities scale and centre-crop the source to that size.
        """
        if video_ref:
            src = source_video(key, video_ref, "video")
            sp = json.loads(src["params"])
            try:
                wh = model.parse_size(size, default=(sp["width"], sp["height"]))
            except RequestProblem as e:
                raise problem(e) from None
            extra = {"source_video_id": video_ref, "source_seed": sp["seed"], "source_path": copy_source(new_id, src),
                     "source_sha256": src["content_hash"]}
            return extra, float(sp["seconds"]), wh
        if video is None:
            raise APIError(400, "missing required parameter 'video' (a video file, or video[id] of a completed "
                                "video)", code="invalid_value", param="video")
        try:
            wh = model.parse_size(size) if size else None
        except RequestProblem as e:
            raise problem(e) from None
        data = read_upload(video, cfg.max_video_mb, "video")
        ext = Path(video.filename or "").suffix.lower()
        ext = ext if ext in (".mp4", ".mov", ".mkv", ".webm", ".gif") else ".mp4"
        path = storage.save_upload(new_id, "source" + ext, data)
        try:
            turns = check_video_file(path, "video")
            vw, vh, dur = probe_upload(path)
            # A phone's portrait clip is stored landscape and turned on display: the size nearest the shape it is
            # shown at is a portrait one (it had been made 96x64, cropped to the middle third of the picture)
            if turns % 2:
                vw, vh = vh, vw
        except APIError:
            storage.remove_all(new_id)
            raise
        seconds = round(max(dur, 1 / model.fps) * model.fps) / model.fps
        return ({"source_path": storage.relative(path), "source_sha256": hashlib.sha256(data).hexdigest()}, seconds,
                wh or model.size_for(vw, vh))

    def probe_upload(path: Path) -> tuple[int, int, float]:
        """(width, height, seconds) of an uploaded video, from its header (no torch in the API process)."""
        try:
            with open_video_file(path) as c:
                st = c.streams.video[0]
                w, h = st.codec_context.width, st.codec_context.height
                sar = st.sample_aspect_ratio  # non-square pixels: the aspect it is shown at picks the size
                if sar and 0.2 <= float(sar) <= 5:
                    w = max(1, round(w * float(sar)))
                dur = float(st.duration * st.time_base) if st.duration else float(c.duration or 0) / 1e6
        except Exception:
            raise APIError(400, "video is not a readable video", code="invalid_file", param="video") from None
        if not (w and h and dur > 0):
            raise APIError(400, "video has no size or duration in its header", code="invalid_file", param="video")
        return w, h, dur

    @app.post("/v1/videos/extensions", name="videos.extend", response_model=Video, responses=ERRORS,
              dependencies=[Depends(known_form_fields)],
              summary="Extend a video (the result is the whole stitched clip: seconds = source + new)")
    def extend_video(request: Request, key: dict = Depends(current_key), prompt: str = Form(..., max_length=100_000),
                     seconds: str = Form(...), video: UploadFile | None = File(None),
                     video_ref: str | None = Form(None, alias="video[id]"), seed: str | None = Form(None),
                     size: str | None = Form(None, description="Moviola extra: the size to make (default: a stored "
                                                               "source's, or the trained size nearest an upload's)"),
                     backward: bool = Form(False, description="Moviola extra: add the new seconds before the "
                                                              "source instead of after it")):
        prompt = check_prompt(prompt)
        try:
            model.require_frames("extending a video", "video")
            new_s = model.parse_seconds(seconds)
        except RequestProblem as e:
            raise problem(e) from None
        params = sampler_params(parse_seed(seed))
        new_id = jobs.new_video_id()
        extra, before, (w, h) = source_from_form(request, key, video, video_ref, new_id, size)
        total = before + new_s
        if total > model.longest + 1e-6:
            storage.remove_all(new_id)
            raise APIError(400, f"the extended video would be {total:g} s ({before:g} s + {new_s:g} s); "
                                f"{model.name} makes at most {model.longest:g} s", code="invalid_value",
                           param="seconds")
        params.update(extra, extension_seconds=new_s, backward=bool(backward))
        return queue(request, key, video_id=new_id, kind="extension", prompt=prompt, seconds=total, width=w,
                     height=h, params=params, cost=new_s)

    @app.post("/v1/videos/edits", name="videos.edit", response_model=Video, responses=ERRORS,
              dependencies=[Depends(known_form_fields)],
              summary="Edit a video with a new prompt (video to video, as many frames as the source)")
    def edit_video(request: Request, key: dict = Depends(current_key), prompt: str = Form(..., max_length=100_000),
                   video: UploadFile | None = File(None), video_ref: str | None = Form(None, alias="video[id]"),
                   seed: str | None = Form(None),
                   strength: str | None = Form(None, description="Moviola extra: 0 keeps the source, 1 ignores "
                                                                 "it (default 0.6)"),
                   size: str | None = Form(None, description="Moviola extra: the size to make")):
        prompt = check_prompt(prompt)
        try:
            st = model.parse_strength(strength)
        except RequestProblem as e:
            raise problem(e) from None
        params = sampler_params(parse_seed(seed))
        new_id = jobs.new_video_id()
        extra, s, (w, h) = source_from_form(request, key, video, video_ref, new_id, size)
        try:
            model.check_source(s, "an edit")
        except RequestProblem as e:
            storage.remove_all(new_id)
            raise problem(e) from None
        params.update(extra, strength=st)
        return queue(request, key, video_id=new_id, kind="edit", prompt=prompt, seconds=s, width=w, height=h,
                     params=params, cost=s, remixed_from=extra.get("source_video_id"))

    @app.post("/v1/videos/storyboards", name="videos.storyboard", response_model=Video, responses=ERRORS,
              summary="Moviola extension (not in Sora's API): one clip from cards of (start second, prompt)")
    def storyboard_video(request: Request, body: StoryboardBody, key: dict = Depends(current_key)):
        """Segment i runs from card i's start to the next card's (the last one to ``seconds``, default its
        start + 2 s) and follows card i's prompt; a card's optional ``image`` (a base64 data: URL) is its
        segment's first frame. ``transition``: "cut" starts each segment afresh, "continue" carries the
        scene on under the new prompt. The result is listed, retrieved and downloaded like any video."""
        try:
            model.parse_model(body.model)
            w, h = model.parse_size(body.size)
            cards, end = model.parse_storyboard([c.model_dump() for c in body.cards], body.seconds, body.transition)
        except RequestProblem as e:
            raise problem(e) from None
        params = sampler_params(body.seed)
        new_id = jobs.new_video_id()
        try:
            for i, c in enumerate(cards):
                image = c.pop("image", None)
                if image:
                    raw = data_url_bytes(image, f"cards[{i}].image")
                    png = image_png(raw, f"cards[{i}].image")
                    c["image_path"] = storage.relative(storage.save_upload(new_id, f"card{i}.png", png))
                    c["image_sha256"] = hashlib.sha256(raw).hexdigest()  # provenance: the file it was given
        except BaseException:
            storage.remove_all(new_id)
            raise
        params.update(cards=cards, transition=body.transition)
        prompt = " | ".join(f"{c['start']:g}s: {c['prompt']}" for c in cards)
        return queue(request, key, video_id=new_id, kind="storyboard", prompt=prompt, seconds=end, width=w,
                     height=h, params=params, cost=end)

    # --- feedback (the studio's) ------------------------------------------------------------------

    @app.post("/v1/videos/{video_id}/feedback", name="videos.feedback", response_model=Video, responses=ERRORS)
    def give_feedback(video_id: str, body: FeedbackBody, key: dict = Depends(current_key)):
        if not jobs.set_feedback(db, key["id"], video_id, body.rating, body.comment):
            raise not_found(video_id)
        return video_response(jobs.get_job(db, key["id"], video_id))

    @app.get("/v1/feedback", name="feedback.export", responses=ERRORS)
    def export_feedback(key: dict = Depends(current_key)):
        """All feedback this key gave, as JSON (one entry per video)."""
        return {"object": "list", "key": key["name"], "data": jobs.export_feedback(db, key["id"])}

    def model_object() -> dict:
        return {"id": model.name, "object": "model", "created": 0, "owned_by": "moviola",
                "moviola": {"fps": model.fps, "sizes": [f"{a}x{b}" for a in model.sides() for b in model.sides()],
                            "max_seconds": model.longest, "window_seconds": model.max_seconds,
                            "known_frames": model.conditioned, "steps": cfg.steps or model.steps,
                            "abilities": ["text_to_video"] + (["image_to_video", "remix", "edit", "extend",
                                                               "storyboard"] if model.conditioned else
                                                              ["remix", "edit", "storyboard"])}}

    @app.get("/v1/models", name="models.list", responses=ERRORS)
    def list_models(key: dict = Depends(current_key)):
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{model_id}", name="models.retrieve", responses=ERRORS)
    def retrieve_model(model_id: str, key: dict = Depends(current_key)):
        if model_id != model.name and model_id not in SORA_MODELS:  # Sora's names: aliases, as videos.create
            raise APIError(404, f"no model {_shown(model_id)}; this server has {model.name!r}", code="model_not_found",
                           param="model")
        return model_object()

    # The SDK's characters (reusable subjects cut from a video): not something Moviola makes. A 400 that says
    # so, not a routing error (and not a 5xx, which the SDK would retry).
    @app.post("/v1/videos/characters", name="videos.create_character", responses=ERRORS, include_in_schema=False)
    @app.get("/v1/videos/characters/{character_id}", name="videos.get_character", responses=ERRORS,
             include_in_schema=False)
    def characters(key: dict = Depends(current_key)):
        raise APIError(400, "characters (videos.create_character / get_character) are not supported by this "
                            "server: describe the subject in the prompt, or start from an image (input_reference)",
                       code="unsupported")

    # --- admin -----------------------------------------------------------------------------------

    @app.post("/v1/admin/keys", name="admin.keys.create", responses={**ERRORS, 403: {"model": ErrorResponse}})
    def admin_create_key(request: Request, body: KeyBody, admin: dict = Depends(admin_key)):
        request.state.audit_target = body.name  # the audit row says which key was made
        try:
            token, rec = keys.create_key(db, body.name, quota_seconds_per_day=body.quota_seconds_per_day,
                                         rate_per_minute=body.rate_per_minute, admin=body.admin)
        except keys.KeyProblem as e:
            raise APIError(400, str(e), code="invalid_value", param="name") from None
        return {**rec, "key": token}

    @app.get("/v1/admin/keys", name="admin.keys.list", responses={**ERRORS, 403: {"model": ErrorResponse}})
    def admin_list_keys(admin: dict = Depends(admin_key)):
        return {"object": "list", "data": keys.list_keys(db)}

    @app.post("/v1/admin/keys/{name}/revoke", name="admin.keys.revoke",
              responses={**ERRORS, 403: {"model": ErrorResponse}})
    def admin_revoke_key(request: Request, name: str, admin: dict = Depends(admin_key)):
        request.state.audit_target = name
        try:
            return keys.revoke_key(db, name)
        except keys.KeyProblem as e:
            raise APIError(404, str(e), code="not_found", param="name") from None

    @app.get("/v1/admin/audit", name="admin.audit", responses={**ERRORS, 403: {"model": ErrorResponse}})
    def admin_audit(admin: dict = Depends(admin_key), limit: int = Query(100, ge=1, le=10000),
                    key_name: str | None = Query(None)):
        return {"object": "list", "data": keys.audit_log(db, limit=limit, key_name=key_name)}

    # --- operations ------------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        db.one("SELECT 1 AS ok")
        try:  # every job writes here: a full or read-only disk makes each one fail, so say so
            for sub in ("videos", "uploads"):
                d = storage.root / sub
                d.mkdir(exist_ok=True)
                probe = d / f".healthz-{secrets.token_hex(4)}"
                try:
                    probe.write_bytes(b"ok")
                finally:  # a full disk creates the file and fails the write: it had been left behind each call
                    probe.unlink(missing_ok=True)
        except OSError as e:
            return JSONResponse({"status": "unhealthy", "model": model.name,
                                 "problem": f"storage is not writable ({e.strerror or e})"}, status_code=503)
        workers = jobs.live_workers(db, model.name)  # only workers of this model take its jobs
        queued, waited = jobs.oldest_queued_wait(db, model.name)  # another model's queue is its workers' concern
        # Jobs wait and nothing takes them: a deploy left no worker running. Only once the oldest has waited
        # WORKER_SEEN_SECONDS and no worker has been seen for as long, so a worker starting or restarting
        # (loading its model) does not flap this to 503.
        if (not workers and queued and waited > jobs.WORKER_SEEN_SECONDS
                and jobs.since_a_worker_was_seen(db, model.name) > jobs.WORKER_SEEN_SECONDS):
            others = jobs.live_workers(db)
            running = (f"{others} worker(s) run, serving other models" if others else "no worker is running")
            return JSONResponse({"status": "unhealthy", "model": model.name, "workers": 0, "queued": queued,
                                 "problem": f"{running}, and the oldest of {queued} queued job(s) has waited "
                                            f"{waited:.0f} s (start one: moviola worker --model with this "
                                            f"server's model folder)"},
                                status_code=503)
        return {"status": "ok", "model": model.name, "workers": workers, "queued": queued}

    @app.get("/metrics", include_in_schema=False, response_class=PlainTextResponse)
    def metrics():
        s = jobs.stats(db)
        lines = ["# HELP moviola_queue_depth Jobs waiting for a worker.", "# TYPE moviola_queue_depth gauge",
                 f"moviola_queue_depth {s['queue_depth']}",
                 "# HELP moviola_jobs Videos by status (deleted ones not counted).", "# TYPE moviola_jobs gauge"]
        lines += [f'moviola_jobs{{status="{k}"}} {v}' for k, v in s["jobs"].items()]
        lines += ["# HELP moviola_busy_workers Workers holding a live lease.", "# TYPE moviola_busy_workers gauge",
                  f"moviola_busy_workers {s['busy_workers']}",
                  "# HELP moviola_live_workers Workers seen alive in the last 30 s, busy or idle.",
                  "# TYPE moviola_live_workers gauge", f"moviola_live_workers {s['live_workers']}",
                  "# HELP moviola_generation_seconds Wall time of finished generations.",
                  "# TYPE moviola_generation_seconds summary",
                  f"moviola_generation_seconds_sum {s['generation_seconds']:.3f}",
                  f"moviola_generation_seconds_count {s['generation_count']}"]
        return "\n".join(lines) + "\n"

    # --- the studio ------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def studio_index():
        return FileResponse(STUDIO_DIR / "index.html", media_type="text/html")

    app.mount("/studio", StaticFiles(directory=STUDIO_DIR), name="studio")
    return app


def _check_port(host: str, port: int) -> None:
    """A ValueError saying why the server could not listen on (host, port) (in use, no such address), tried
    on every address the host resolves to, as uvicorn binds them, before any worker starts or banner prints."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, addr in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
    except OSError as e:  # socket.gaierror too
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(cfg: ServerConfig) -> int:
    """``moviola serve``: uvicorn on host:port plus ``cfg.workers`` worker processes, restarted if they die."""
    import os
    import signal
    import subprocess
    import sys

    import uvicorn

    app = create_app(cfg)  # fails here, before any worker starts, on a bad db/storage/model
    _check_port(cfg.host, cfg.port)  # and here on a port in use: the banner below is then true
    cmd = [sys.executable, "-m", "moviola.cli", "worker", "--db", cfg.db_url(), "--storage", cfg.storage,
           "--lease-seconds", str(cfg.lease_seconds), "--ttl-seconds", str(cfg.ttl_seconds),
           "--parent-pid", str(os.getpid())]  # if this process is SIGKILLed, its workers stop by themselves
    if cfg.model:
        cmd += ["--model", cfg.model]
    if cfg.worker_threads:
        cmd += ["--threads", str(cfg.worker_threads)]
    procs: list[subprocess.Popen] = [subprocess.Popen(cmd) for _ in range(cfg.workers)]
    stop = threading.Event()

    def supervise() -> None:  # a worker that dies (OOM, a crash) is replaced; its job's lease runs out
        while not stop.wait(2.0):
            for i, p in enumerate(procs):
                if p.poll() is not None and not stop.is_set():
                    print(f"moviola serve: worker {p.pid} exited with {p.returncode}; starting another", flush=True)
                    procs[i] = subprocess.Popen(cmd)

    threading.Thread(target=supervise, daemon=True).start()
    print(f"moviola serve: http://{cfg.host}:{cfg.port}/  (API at /v1, {cfg.workers} worker(s), "
          f"db {app.state.db.url if app.state.db.dialect == 'sqlite' else 'postgresql'}, "
          f"storage {app.state.storage.root})", flush=True)
    def on_term(signum, frame):
        raise SystemExit(0)

    # uvicorn shuts down gracefully on SIGTERM, then restores this handler and raises the signal again:
    # with the default handler that would kill this process before it stops its workers.
    signal.signal(signal.SIGTERM, on_term)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()  # the worker gives its job back to the queue
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, 9)
    return 0
