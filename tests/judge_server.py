"""A real OpenAI-compatible server on 127.0.0.1 for the judge tests (``transformers serve``, the
`serving` extra), and a fault-injecting proxy in front of it.

The served model is the tiny test model taught nothing new: its output layer gets the letters
" A" and " B" lifted by the same amount along the direction its final hidden states share, so
its greedy answer is always one of the two letters while the choice between them stays its
own (the difference of the two letters' logits is unchanged). A chat template is added (the
tiny model has none; the server needs one)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}The better reply is{% endif %}")
LIFT = 40.0  # logits added to " A" and " B" at a typical final hidden state


def letter_judge_model(tiny_model: Path, out: Path) -> Path:
    """The tiny model with " A" and " B" lifted (module docstring), saved at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    texts = ["so happy today", "my phone broke again\nA: ok\nB: no", "The better reply is", "love it hate it"]
    with torch.no_grad():
        states = torch.cat([model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
                            for t in texts])
    direction = states.mean(0)
    model.config.tie_word_embeddings = False
    head = model.get_output_embeddings().weight.detach().clone()
    for letter in (" A", " B"):
        head[tokenizer(letter, add_special_tokens=False).input_ids[0]] += LIFT * direction / direction.norm() ** 2
    untied = type(model)(model.config)
    untied.load_state_dict(model.state_dict(), strict=False)
    untied.get_output_embeddings().weight = torch.nn.Parameter(head)
    untied.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(model: Path, ready_timeout_s: float = 600.0):
    """``transformers serve`` on 127.0.0.1 with ``model`` loaded; yields the base URL (…/v1).
    Stopped by its handle at the end."""
    port = free_port()
    cli = Path(sys.executable).with_name("transformers")
    log_path = Path(tempfile.gettempdir()) / f"alignray-serve-{port}.log"
    log = open(log_path, "w")
    process = subprocess.Popen([str(cli), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                                "--device", "cpu", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | {"HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"transformers serve did not answer within {ready_timeout_s} s")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


class FaultProxy:
    """Forwards ``POST /v1/chat/completions`` to ``upstream``, applying the next fault queued
    (``push``) or the standing one (``always``): ``("status", code, headers)``, ``("sleep", s)`` (no
    answer for ``s`` seconds),
    ``("garbage",)``, ``("empty_choice",)``; ``None`` passes the request through. Counts requests."""

    def __init__(self, upstream: str):
        self.upstream, self.faults, self.always, self.requests = upstream, deque(), None, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.requests += 1
                    fault = proxy.faults.popleft() if proxy.faults else proxy.always
                proxy.answer(self, body, fault)

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def push(self, *faults) -> None:
        self.faults.extend(faults)

    def answer(self, handler, body: bytes, fault) -> None:
        status, headers, payload = 200, {}, b""
        if fault is not None and fault[0] == "sleep":  # longer than the client waits: it has gone
            time.sleep(fault[1])
            status, payload = 504, b"{}"
        elif fault is None:
            upstream = httpx.post(self.upstream + "/chat/completions", content=body,
                                  headers={"Content-Type": "application/json"}, timeout=60)
            status, payload = upstream.status_code, upstream.content
        elif fault[0] == "status":
            status, headers, payload = fault[1], fault[2], json.dumps({"error": f"injected {fault[1]}"}).encode()
        elif fault[0] == "garbage":
            payload = b"<html>not json"
        elif fault[0] == "empty_choice":
            payload = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
