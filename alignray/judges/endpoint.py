"""An OpenAI-compatible chat-completions endpoint as a judge (httpx): the questions go out on
``concurrency`` threads, each request retried on 429, 5xx, timeouts and refused connections
with exponential backoff that honours ``Retry-After``. 401/403 and other 4xx are not retried.
Nothing here raises for one bad request: each becomes a ``failed`` answer with its reason.
When the first ``give_up_after`` requests all fail, the rest are not sent and ``ask`` raises
``EndpointDown`` naming the URL and the last answer, as it does when every request failed. Each answer is handed to ``on_answer``
as it arrives (alignray.judges.forms stores it in the verdict cache there).

The API key is read from the environment variable the config names, never from a file.
"""
from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import httpx

from alignray.config.judge import EndpointJudgeConfig
from alignray.judges.verdicts import FAILED, Answer, read_choice

log = logging.getLogger(__name__)
RETRIED = {429, 500, 502, 503, 504}
TOP_LOGPROBS = 5


class EndpointDown(RuntimeError):
    """The endpoint failed every request: the phase stops, naming it and its last answer."""


def retry_after_s(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); None without one."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class EndpointJudge:
    """Asks one endpoint."""

    def __init__(self, cfg: EndpointJudgeConfig):
        if not cfg.base_url or not cfg.model:
            raise ValueError("an openai judge needs ai_judge.openai.base_url and ai_judge.openai.model")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.client = httpx.Client(timeout=cfg.timeout_s, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.lock = threading.Lock()
        self.answered, self.failed_in_a_row, self.last_failure = 0, 0, ""
        self.requests = 0

    def identity(self) -> dict:
        """What decides this judge's verdicts besides the question: part of every cache key."""
        return {"kind": "openai", "model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature, "logprobs": self.cfg.logprobs}

    def body(self, question: str) -> dict:
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": question}],
                "max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        if self.cfg.logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        return body

    def wait_s(self, attempt: int, response: httpx.Response | None) -> float:
        told = retry_after_s(response.headers) if response is not None else None
        wait = told if told is not None else self.cfg.backoff_s * 2 ** attempt
        return min(wait, self.cfg.max_backoff_s)

    def request(self, question: str) -> tuple[httpx.Response | None, str]:
        """The endpoint's response after the retries, or None and why not."""
        response, reason = None, ""
        for attempt in range(self.cfg.max_retries + 1):
            if self.giving_up():
                return None, "not_sent"
            try:
                with self.lock:
                    self.requests += 1
                response = self.client.post(self.url, json=self.body(question))
            except httpx.TimeoutException:
                response, reason = None, "timeout"
            except httpx.TransportError as error:
                response, reason = None, f"connection: {type(error).__name__}"
            else:
                if response.status_code < 400:
                    return response, ""
                reason = f"http_{response.status_code}"
                if response.status_code not in RETRIED:
                    return None, reason + f": {response.text[:200]}"
            if attempt < self.cfg.max_retries:
                time.sleep(self.wait_s(attempt, response))
        detail = f": {response.text[:200]}" if response is not None else ""
        return None, reason + detail

    def giving_up(self) -> bool:
        with self.lock:
            return self.answered == 0 and self.failed_in_a_row >= self.cfg.give_up_after

    def answer(self, question: str, labels: Sequence[str], flaws: Sequence[str]) -> Answer:
        started = time.monotonic()
        response, reason = self.request(question)
        answer = Answer(FAILED, reason=reason.split(":")[0])
        if response is not None:
            answer = self.read(response, labels, flaws)
            reason = answer.reason if answer.status == FAILED else ""
        answer.seconds = time.monotonic() - started
        with self.lock:
            if answer.status == FAILED:
                self.failed_in_a_row += 1
                if reason != "not_sent":
                    self.last_failure = reason
            else:
                self.answered, self.failed_in_a_row = self.answered + 1, 0
        return answer

    @staticmethod
    def read(response: httpx.Response, labels: Sequence[str], flaws: Sequence[str]) -> Answer:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return Answer(FAILED, reason="garbage_or_empty_choice")
        answer = read_choice(text, choice.get("logprobs"), labels, flaws)
        usage = payload.get("usage") or {}
        answer.tokens_in = int(usage.get("prompt_tokens") or 0)
        answer.tokens_out = int(usage.get("completion_tokens") or 0)
        return answer

    def ask(self, questions: Sequence[str], labels: Sequence[str], flaws: Sequence[str] = (),
            on_answer: Callable[[int, Answer], None] | None = None) -> list[Answer]:
        """One answer per question (with the rubric's instruction already in it)."""
        def one(i: int) -> Answer:
            answer = self.answer(questions[i], labels, flaws)
            if on_answer is not None:
                on_answer(i, answer)
            return answer

        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            answers = list(pool.map(one, range(len(questions))))
        if answers and self.answered == 0:
            raise EndpointDown(f"the judge endpoint {self.url} failed every request ({len(answers)} asked); "
                               f"last answer: {self.last_failure or 'none'}")
        return answers

    def close(self) -> None:
        self.client.close()
