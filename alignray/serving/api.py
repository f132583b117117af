"""The reward endpoint's HTTP API, without Ray: request and response shapes, request
limits, bearer-token authentication and the FastAPI app itself.

`workflows/serve.py` puts this app behind Ray Serve and supplies the scorer (batching
across clients happens there); everything here runs in a plain process.

Endpoints (all but /healthz and the OpenAPI document need the token when auth is on):
  POST /v1/score    {"prompts": [...], "responses": [...]} or [{"prompt", "response"}, ...]
                    -> normalised rewards, the disagreement of an ensemble's members
                    (their std in reward units; 0 for a single model), model name and
                    version, observed batch size
  POST /get_reward  {"query": [...]} -> {"rewards": [...]}: what OpenRLHF's remote reward
                    client sends, each query the full prompt+response text
  GET  /v1/model    name, version, ensemble members, normalisation statistics, limits
  GET  /v1/stats    this replica's batching statistics
  GET  /healthz     liveness, never authenticated (load balancers probe it)

Errors: 401 without a valid token, 403 for a non-loopback client when auth is off,
413 for a body, request or item over its limit, 415 for a body not sent as JSON, 422 (one
readable message) for a body of the wrong shape. Nothing a client sends can produce a 500.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, Protocol, Sequence, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictStr,
                      StringConstraints, Tag, model_validator)

# A shorter token is guessable; `secrets.token_urlsafe(32)` makes a good one.
MIN_TOKEN_CHARS = 16
MAX_ERRORS_REPORTED = 5


# ---------------------------------------------------------------- request limits
@dataclass(frozen=True)
class RequestLimits:
    max_items: int = 256
    max_chars_per_item: int = 8192
    max_body_bytes: int = 1024 * 1024


class LimitExceeded(ValueError):
    """A request over one of the limits: answered with 413 and this message."""


def check_limits(fields: dict[str, Sequence[str]], limits: RequestLimits) -> None:
    """Every field is a list of texts, one per item (`prompts`, `responses`, `query`)."""
    for name, texts in fields.items():
        if len(texts) > limits.max_items:
            raise LimitExceeded(f"{name} has {len(texts)} items; the limit is {limits.max_items} per request")
        for index, text in enumerate(texts):
            if len(text) > limits.max_chars_per_item:
                raise LimitExceeded(f"{name}[{index}] has {len(text)} characters; "
                                    f"the limit is {limits.max_chars_per_item}")


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, whether Content-Length declares
    it or a chunked body only turns out that large. The body is read (at most max_bytes of
    it) before the app sees it, so an oversized one is never parsed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reject(scope, receive, send, 400, "Content-Length is not a number")
            if int(declared) > self.max_bytes:
                return await _reject(scope, receive, send, 413, self._too_large(int(declared)))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _reject(scope, receive, send, 413, self._too_large(size, at_least=True))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return f"request body is {'over ' if at_least else ''}{size} bytes; the limit is {self.max_bytes}"


async def _reject(scope, receive, send, status: int, message: str) -> None:
    await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)


# ---------------------------------------------------------------- authentication
class AuthConfigError(RuntimeError):
    """The server may not start with this authentication setting."""


def load_token(env_var: Optional[str], token_file: Optional[str]) -> Optional[str]:
    """The bearer token from `token_file` if one is configured (it must exist), else from
    the environment variable `env_var`; None when neither gives one."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise AuthConfigError(f"token file {path} does not exist")
        token = path.read_text().strip()
        source = f"token file {path}"
    else:
        token = os.environ.get(env_var, "").strip() if env_var else ""
        source = f"${env_var}"
    if not token:
        if token_file:
            raise AuthConfigError(f"{source} is empty")
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(f"the token in {source} has {len(token)} characters; use at least "
                              f"{MIN_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def token_digest(token: str) -> str:
    """Replicas receive only this digest, so the token itself never enters Ray's
    metadata (deployment arguments are stored by the Serve controller)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str, digest: str) -> bool:
    """Constant-time: the comparison takes as long for a near miss as for a far one."""
    return hmac.compare_digest(token_digest(presented).encode(), digest.encode())


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach; 0.0.0.0 and names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_is_safe(host: str, digest: Optional[str], require_token: bool = False, section: str = "serve") -> None:
    """Refuse to serve without a token on an address other machines can reach (the endpoint
    configured under ``section``)."""
    if digest is not None:
        return
    if require_token:
        raise AuthConfigError(f"{section}.require_token is set but no token was found ({section}.token_file or "
                              f"{section}.token_env)")
    if not is_loopback(host):
        raise AuthConfigError(f"host {host} is reachable from other machines: set a bearer token "
                              f"({section}.token_file or the variable named by {section}.token_env) or bind 127.0.0.1")




# ---------------------------------------------------------------- request and response shapes
def _encodable(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); the tokenizer would fail on them inside a
    # batch, failing every other client's request in it too.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_encodable)]
# A full text has at least one character: an empty one would give the model no tokens.
FullText = Annotated[str, StringConstraints(strict=True, min_length=1), AfterValidator(_encodable)]


class ScorePair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text
    response: Text


class ScoreColumns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[Text] = Field(min_length=1)
    responses: list[Text] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} responses")
        return self


def _score_body_shape(value: Any) -> Optional[str]:
    if isinstance(value, list):
        return "items"
    return "columns" if isinstance(value, dict) else None


ScoreRequest = Annotated[
    Union[Annotated[ScoreColumns, Tag("columns")],
          Annotated[list[ScorePair], Field(min_length=1), Tag("items")]],
    Discriminator(_score_body_shape, custom_error_type="body_shape",
                  custom_error_message='expected {"prompts": [...], "responses": [...]} '
                                       'or a list of {"prompt": ..., "response": ...} items'),
]


def request_pairs(body: Union[ScoreColumns, list[ScorePair]]) -> tuple[list[str], list[str]]:
    if isinstance(body, ScoreColumns):
        return body.prompts, body.responses
    return [item.prompt for item in body], [item.response for item in body]


class CompatRequest(BaseModel):
    # OpenRLHF also sends `prompts` and `labels`; the query alone is what is scored.
    model_config = ConfigDict(extra="ignore")
    query: list[FullText] = Field(min_length=1)


class CompatResponse(BaseModel):
    rewards: list[float]


@dataclass
class ScoredItems:
    """Rewards and disagreement for one request, and the size of the cross-client batch
    that scored it."""
    rewards: list[float]
    disagreement: list[float]
    batch_requests: int
    batch_items: int


class ScoreResponse(BaseModel):
    rewards: list[float]
    disagreement: list[float] = Field(description="per item, the std of the ensemble members' rewards in the "
                                                  "rewards' units; 0 for a single model")
    normalized: bool = True
    model_name: str
    model_version: str
    batch_requests: int = Field(description="requests scored in the same call as this one, across clients")
    batch_items: int = Field(description="items scored in that call")


class Normalization(BaseModel):
    mean: float
    std: float


class ModelInfo(BaseModel):
    name: str
    version: str
    members: int = Field(1, description="reward models in the ensemble; 1 for a single model")
    normalization: Normalization
    max_length: int
    max_items_per_request: int
    max_chars_per_item: int
    max_body_bytes: int


@dataclass
class BatchStats:
    """What one replica's batching achieved: how many requests each scoring call merged."""
    requests: int = 0
    items: int = 0
    batches: int = 0
    max_batch_requests: int = 0
    batch_requests_histogram: Counter = field(default_factory=Counter)

    def record(self, batch_requests: int, batch_items: int) -> None:
        self.requests += batch_requests
        self.items += batch_items
        self.batches += 1
        self.max_batch_requests = max(self.max_batch_requests, batch_requests)
        self.batch_requests_histogram[batch_requests] += 1

    def as_dict(self) -> dict:
        return {"requests": self.requests, "items": self.items, "batches": self.batches,
                "max_batch_requests": self.max_batch_requests,
                "mean_batch_requests": self.requests / self.batches if self.batches else 0.0,
                "batch_requests_histogram": {str(k): v for k, v in sorted(self.batch_requests_histogram.items())}}


class StatsResponse(BaseModel):
    replica: str
    requests: int
    items: int
    batches: int
    max_batch_requests: int
    mean_batch_requests: float
    batch_requests_histogram: dict[str, int]


# ---------------------------------------------------------------- the app
class RewardScorer(Protocol):
    """What the app needs from whoever holds the model (a Serve replica, or a test)."""

    async def score_pairs(self, prompts: list[str], responses: list[str]) -> ScoredItems: ...

    async def score_texts(self, texts: list[str]) -> ScoredItems: ...

    def model_info(self) -> ModelInfo: ...

    def stats(self) -> StatsResponse: ...


def describe_validation_errors(errors: Sequence[dict]) -> str:
    """One line per problem, `where: what`, without echoing the client's input back."""
    lines = []
    for error in errors[:MAX_ERRORS_REPORTED]:
        if error.get("type") == "json_invalid":
            lines.append(f"body is not valid JSON (at character {error['loc'][-1]})")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "columns", "items"))
        what = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{where or 'body'}: {what}")
    if len(errors) > MAX_ERRORS_REPORTED:
        lines.append(f"... and {len(errors) - MAX_ERRORS_REPORTED} more")
    return "; ".join(lines)


def build_reward_api(scorer: RewardScorer, limits: RequestLimits, digest: Optional[str]) -> FastAPI:
    """The FastAPI app over `scorer`. `digest` (of the bearer token) turns auth on; without
    it only loopback clients are answered, whatever address the server was bound to."""
    app = FastAPI(title="alignray reward model",
                  description="Scores (prompt, response) pairs with a trained reward model.")
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="the token in serve.token_file / serve.token_env")

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": describe_validation_errors(error.errors())}, status_code=422)

    @app.exception_handler(LimitExceeded)
    async def _over_limit(request: Request, error: LimitExceeded):
        return JSONResponse({"detail": str(error)}, status_code=413)

    def authorized(request: Request,
                   credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if digest is None:
            client = request.client.host if request.client else ""
            if not is_loopback(client):
                raise HTTPException(403, "authentication is off, so only loopback clients are served")
            return
        if credentials is None or not token_matches(credentials.credentials, digest):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def json_body(request: Request) -> None:
        # Without it the body is not parsed as JSON, and the 422 would blame valid JSON.
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, "send the body as JSON with Content-Type: application/json, "
                                     f"not {media_type or 'none'}")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    async def model() -> ModelInfo:
        return scorer.model_info()

    @app.get("/v1/stats", dependencies=[Depends(authorized)])
    async def stats() -> StatsResponse:
        return scorer.stats()

    @app.post("/v1/score", dependencies=[Depends(authorized), Depends(json_body)])
    async def score(body: ScoreRequest) -> ScoreResponse:
        prompts, responses = request_pairs(body)
        check_limits({"prompts": prompts, "responses": responses}, limits)
        scored = await scorer.score_pairs(prompts, responses)
        info = scorer.model_info()
        return ScoreResponse(rewards=scored.rewards, disagreement=scored.disagreement, model_name=info.name, model_version=info.version,
                             batch_requests=scored.batch_requests, batch_items=scored.batch_items)

    @app.post("/get_reward", dependencies=[Depends(authorized), Depends(json_body)])
    async def get_reward(body: CompatRequest) -> CompatResponse:
        check_limits({"query": body.query}, limits)
        return CompatResponse(rewards=(await scorer.score_texts(body.query)).rewards)

    return app
