"""The collection server's HTTP API and pages, without Ray (docs/collect.md lists the routes).

`actors/collector.py` puts this app behind Ray Serve; here it runs in any ASGI server.

Who may do what:
* an annotator authenticates with their bearer token (JSON clients) or with the session
  cookie their one-time link set (pages). A cookie-authenticated write must carry the
  page's CSRF token in ``X-CSRF-Token`` and may not come from another origin; the cookie
  is HttpOnly and SameSite=Strict. An annotator reads and writes only their own queue.
* the admin authenticates with the admin bearer token (or the cookie of an admin link);
  without a configured token only loopback clients reach the admin routes.
* every annotator route is rate limited per annotator (429 with Retry-After).
"""
from __future__ import annotations

import hashlib
import html
import io
import os
import time
from importlib import resources
from typing import Optional
from urllib.parse import urlparse

import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from alignray.collect.labels import FormSettings, LabelBody, LabelError, check_label, make_task
from alignray.collect.quality import live_quality
from alignray.collect.ratelimit import RateLimiter
from alignray.collect.store import ADMIN, ANNOTATOR, Credential, LabelStore, StoreError
from alignray.config.collect import CollectConfig
from alignray.serving.api import BodySizeLimit, describe_validation_errors, is_loopback, token_matches

SESSION_COOKIE = "alignray_session"
ADMIN_COOKIE = "alignray_admin"
CSRF_HEADER = "x-csrf-token"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
PAGES = resources.files("alignray.collect") / "pages"


def csrf_token(session: str) -> str:
    """Derived from the session token: only a page that was given it (same origin, the
    cookie's owner) can send it back; a cross-site page can read neither."""
    return hashlib.sha256(b"alignray-csrf\x1f" + session.encode()).hexdigest()


def form_settings(cfg: CollectConfig) -> FormSettings:
    return FormSettings((float(cfg.scale_min), float(cfg.scale_max)), tuple(cfg.flaws))


class AdminAnnotator(BaseModel):
    model_config = ConfigDict(extra="forbid")
    annotator_id: str = Field(min_length=1, max_length=128)
    group: Optional[str] = None


class AdminTasks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[dict] = Field(min_length=1)
    assign_to: Optional[list[str]] = None


class AccuracyPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: int = Field(ge=0, description="labels the reward model was trained on")
    accuracy: float = Field(ge=0.0, le=1.0, description="its held-out accuracy")
    model: Optional[str] = Field(None, max_length=256)


def _bearer(request: Request) -> Optional[str]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _refuse_cross_site(request: Request) -> None:
    """A cookie-authenticated write must come from a page of this origin."""
    origin = request.headers.get("origin")
    if origin is not None and urlparse(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"cross-site request from {origin} refused")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")


class Guard:
    """Authentication, CSRF and rate limits: FastAPI dependencies over one store."""

    def __init__(self, store: LabelStore, admin_digest: Optional[str], limiter: RateLimiter):
        self.store, self.admin_digest, self.limiter = store, admin_digest, limiter

    def session(self, request: Request, cookie: str) -> Optional[tuple[Credential, str]]:
        token = request.cookies.get(cookie)
        credential = self.store.authenticate(token) if token else None
        return (credential, token) if credential else None

    def annotator(self, request: Request) -> str:
        token = _bearer(request)
        if token is not None:
            credential = self.store.authenticate(token)
        else:
            found = self.session(request, SESSION_COOKIE)
            credential = found[0] if found else None
            if found and request.method not in ("GET", "HEAD"):
                _refuse_cross_site(request)
                if request.headers.get(CSRF_HEADER) != csrf_token(found[1]):
                    raise HTTPException(403, "missing or wrong CSRF token")
        if credential is None or credential.role != ANNOTATOR:
            raise HTTPException(401, "missing or wrong token; open your one-time link or send "
                                     "Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
        wait = self.limiter.acquire(credential.subject, time.monotonic())
        if wait > 0:
            raise HTTPException(429, f"too many requests; retry in {wait:.1f} s",
                                {"Retry-After": str(max(1, round(wait + 0.5)))})
        return credential.subject

    def admin(self, request: Request) -> None:
        token = _bearer(request)
        if token is not None and self.admin_digest is not None and token_matches(token, self.admin_digest):
            return
        found = self.session(request, ADMIN_COOKIE)
        if found and found[0].role == ADMIN:
            if request.method not in ("GET", "HEAD"):
                _refuse_cross_site(request)
            return
        if self.admin_digest is None and token is None and is_loopback(request.client.host if request.client else ""):
            return
        raise HTTPException(401, "missing or wrong admin token", {"WWW-Authenticate": "Bearer"})


def _set_cookie(response: Response, request: Request, name: str, value: str) -> Response:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/", max_age=30 * 24 * 3600)
    return response


def _page(name: str, **values: str) -> HTMLResponse:
    text = (PAGES / name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return HTMLResponse(text, headers={"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                                       "Cache-Control": "no-store"})


def _add_pages(app: FastAPI, store: LabelStore, guard: Guard) -> None:
    def login(request: Request, key: str, role: str, cookie: str, target: str) -> Response:
        redeemed = store.redeem_login_key(key)
        if redeemed is None or redeemed[0].role != role:
            return HTMLResponse("<p>This link is unknown or was used already: ask for a new one.</p>", 401)
        return _set_cookie(RedirectResponse(target, status_code=303), request, cookie, redeemed[1])

    @app.get("/login", include_in_schema=False)
    def annotator_login(request: Request, key: str = "") -> Response:
        return login(request, key, ANNOTATOR, SESSION_COOKIE, "task")

    @app.get("/admin/login", include_in_schema=False)
    def admin_login(request: Request, key: str = "") -> Response:
        return login(request, key, ADMIN, ADMIN_COOKIE, "../admin")

    @app.get("/task", include_in_schema=False)
    def task_page(request: Request) -> Response:
        found = guard.session(request, SESSION_COOKIE)
        if found is None or found[0].role != ANNOTATOR:
            return HTMLResponse("<p>Open the one-time link you were given to start.</p>", 401)
        return _page("task.html", annotator=found[0].subject, csrf=csrf_token(found[1]))

    @app.get("/admin", include_in_schema=False, dependencies=[Depends(guard.admin)])
    def admin_page() -> Response:
        return _page("admin.html")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        suffix = os.path.splitext(name)[1]
        if suffix not in ASSET_TYPES or "/" in name or not (PAGES / name).is_file():
            raise HTTPException(404, f"no asset {name!r}")
        return Response((PAGES / name).read_text(), media_type=ASSET_TYPES[suffix])


def _add_annotator_api(app: FastAPI, store: LabelStore, guard: Guard, cfg: CollectConfig) -> None:
    settings = form_settings(cfg)

    @app.get("/api/task")
    def next_task(who: str = Depends(guard.annotator)) -> Response:
        task = store.next_task(who)
        if task is None:
            return Response(status_code=204)
        return JSONResponse(task.public() | {"scale": list(settings.scale), "flaws": list(settings.flaws),
                                             "progress": store.progress(who)})

    @app.post("/api/labels")
    def save_label(label: LabelBody, who: str = Depends(guard.annotator)) -> dict:
        task = store.queued_task(who, label.task_id)
        check_label(task, label, settings)
        duplicate = store.record(who, label.model_dump())
        return {"saved": True, "label_id": label.label_id, "duplicate": duplicate}

    @app.post("/api/undo")
    def undo(who: str = Depends(guard.annotator)) -> dict:
        undone = store.undo(who)
        if undone is None:
            raise HTTPException(409, "nothing to undo")
        return {"undone": undone}


def _add_admin_api(app: FastAPI, store: LabelStore, guard: Guard, cfg: CollectConfig) -> None:
    admin = [Depends(guard.admin)]
    quality_cache: dict = {}

    @app.post("/admin/api/annotators", dependencies=admin)
    def add_annotator(body: AdminAnnotator, request: Request) -> dict:
        new = store.add_annotator(body.annotator_id, body.group)
        return {"annotator_id": new.annotator_id, "token": new.token,
                "link": str(request.url_for("annotator_login").include_query_params(key=new.login_key))}

    @app.post("/admin/api/tasks", dependencies=admin)
    def add_tasks(body: AdminTasks) -> dict:
        try:
            tasks = [make_task(item, cfg.forms, f"tasks.{i}") for i, item in enumerate(body.tasks)]
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        task_ids = store.add_tasks(tasks, body.assign_to)
        return {"added": len(task_ids), "task_ids": task_ids}

    @app.get("/admin/api/quality", dependencies=admin)
    def quality() -> dict:
        # Recomputed only when a label, skip, undo or annotator was added since.
        version = (store.version(), len(store.annotator_groups()))
        if quality_cache.get("version") != version:
            quality_cache.update(version=version, report=live_quality(store, cfg))
        return quality_cache["report"] | {"accuracy": store.accuracy_curve(), "updated": time.time()}

    @app.post("/admin/api/accuracy", dependencies=admin)
    def add_accuracy(point: AccuracyPoint) -> dict:
        store.add_accuracy(point.labels, point.accuracy, point.model)
        return {"points": len(store.accuracy_curve())}

    @app.get("/admin/api/feedback", dependencies=admin)
    def feedback() -> Response:
        sink = io.BytesIO()
        pq.write_table(store.feedback_table(), sink)
        return Response(sink.getvalue(), media_type="application/vnd.apache.parquet")

    @app.get("/admin/api/status", dependencies=admin)
    def status() -> dict:
        return {"pid": os.getpid(), "store": str(store.path), "version": store.version()}


def build_collect_api(store: LabelStore, cfg: CollectConfig, admin_digest: Optional[str]) -> FastAPI:
    app = FastAPI(title="alignray feedback collection",
                  description="Pages and JSON API for annotators; an admin API for the collection's owner.")
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    guard = Guard(store, admin_digest, RateLimiter(cfg.rate_per_minute, cfg.burst))

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": describe_validation_errors(error.errors())}, status_code=422)

    @app.exception_handler(StoreError)
    async def _refused(request: Request, error: StoreError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(LabelError)
    async def _bad_label(request: Request, error: LabelError):
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    _add_pages(app, store, guard)
    _add_annotator_api(app, store, guard, cfg)
    _add_admin_api(app, store, guard, cfg)
    return app
