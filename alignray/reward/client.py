"""Client of the reward endpoint (workflows/serve.py), for PPO and evaluation.

    client = RewardClient("http://127.0.0.1:8000", token=None)   # token: or $ALIGNRAY_SERVE_TOKEN
    rewards = client.score(prompts, responses)                    # list[float], normalised
    rewards, disagreement = client.score_with_disagreement(prompts, responses)  # ensemble members' std

It sends ``POST <url>/v1/score`` with ``{"prompts": [...], "responses": [...]}`` and a
bearer token when it has one, in requests of at most ``max_items_per_request`` items (the
server refuses larger ones with 413). Connection failures, timeouts and answers that may
succeed on a retry (429, 502, 503, 504) are retried with exponential backoff; any other
refusal (401, 413, 422, ...) raises at once with the server's message, since sending the
same request again cannot change it. Standard library only, so it runs anywhere.

A URL ending in ``/get_reward`` is a remote reward model of OpenRLHF's kind (its
``serve_rm``, and servers written to its protocol): the client then sends
``{"query": [...], "prompts": [...]}``, each query the prompt and the response joined by a
space as plain text (such a server reads the query as it is, with no chat template), and
reads ``rewards`` from the answer as it does from alignray's own endpoint.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Sequence

SCORE_ROUTE = "/v1/score"
OPENRLHF_ROUTE = "/get_reward"
TOKEN_ENV = "ALIGNRAY_SERVE_TOKEN"
RETRIABLE_STATUS = (429, 502, 503, 504)


class RewardEndpointError(RuntimeError):
    """The endpoint refused a request, or stayed unreachable through every retry."""


class RewardClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retries: int = 3,
                 max_items_per_request: int = 256, backoff_s: float = 0.5):
        base = url.rstrip("/")
        self.url = base if base.endswith((SCORE_ROUTE, OPENRLHF_ROUTE)) else base + SCORE_ROUTE
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = timeout
        self.retries = retries
        self.max_items_per_request = max_items_per_request
        self.backoff_s = backoff_s
        # What the last answer said it was scored with (name and version of the model).
        self.model_name: str | None = None
        self.model_version: str | None = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Normalised rewards, one per (prompt, response), in order."""
        return self.score_with_disagreement(prompts, responses)[0]

    def score_with_disagreement(self, prompts: Sequence[str],
                                responses: Sequence[str]) -> tuple[list[float], list[float]]:
        """Normalised rewards and the ensemble members' disagreement (0 for a single model,
        or for a server that does not report it), one each per (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rewards: list[float] = []
        disagreement: list[float] = []
        for start in range(0, len(prompts), self.max_items_per_request):
            end = start + self.max_items_per_request
            chunk = self._post(self._body(prompts[start:end], responses[start:end]), expected=len(prompts[start:end]))
            rewards += chunk[0]
            disagreement += chunk[1]
        return rewards, disagreement

    def _body(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        if self.url.endswith(OPENRLHF_ROUTE):
            return {"query": [f"{p} {r}" for p, r in zip(prompts, responses)], "prompts": list(prompts)}
        return {"prompts": list(prompts), "responses": list(responses)}

    def _post(self, body: dict, expected: int) -> tuple[list[float], list[float]]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    return self._rewards(json.loads(answer.read()), expected)
            except urllib.error.HTTPError as error:
                message = error.read().decode(errors="replace")[:500]
                if error.code not in RETRIABLE_STATUS or attempt >= self.retries:
                    raise RewardEndpointError(f"{self.url} answered {error.code}: {message}") from error
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt >= self.retries:
                    raise RewardEndpointError(f"{self.url} unreachable after {attempt + 1} tries: {error}") from error
            time.sleep(self.backoff_s * 2 ** attempt)
            attempt += 1

    def _rewards(self, answer: dict, expected: int) -> tuple[list[float], list[float]]:
        rewards = answer.get("rewards")
        disagreement = answer.get("disagreement", [0.0] * expected)
        for name, values in (("rewards", rewards), ("disagreement", disagreement)):
            if not isinstance(values, list) or len(values) != expected:
                raise RewardEndpointError(f"{self.url} returned {len(values) if isinstance(values, list) else values!r}"
                                          f" {name} for {expected} items")
        self.model_name = answer.get("model_name", answer.get("model"))
        self.model_version = answer.get("model_version", answer.get("version"))
        return [float(r) for r in rewards], [float(d) for d in disagreement]
