"""The reward endpoint: its pure parts in-process (limits, auth, request shapes, errors),
then the real Ray Serve app on loopback (one app for the module, auth on)."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from alignray.config import ServeConfig
from alignray.serving.api import (AuthConfigError, BatchStats, LimitExceeded, ModelInfo,
                                Normalization, RequestLimits, ScoredItems, StatsResponse,
                                build_reward_api, check_bind_is_safe, check_limits, is_loopback,
                                load_token, token_digest, token_matches)

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = RequestLimits(max_items=8, max_chars_per_item=200, max_body_bytes=4096)


# ---------------------------------------------------------------- pure: no Ray
def test_limits_name_the_field_and_the_limit():
    check_limits({"prompts": ["a"] * 8}, LIMITS)
    with pytest.raises(LimitExceeded, match="prompts has 9 items; the limit is 8"):
        check_limits({"prompts": ["a"] * 9}, LIMITS)
    with pytest.raises(LimitExceeded, match=r"responses\[1\] has 201 characters; the limit is 200"):
        check_limits({"responses": ["ok", "x" * 201]}, LIMITS)


def test_token_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIGNRAY_TEST_TOKEN", raising=False)
    assert load_token("ALIGNRAY_TEST_TOKEN", None) is None
    monkeypatch.setenv("ALIGNRAY_TEST_TOKEN", TOKEN)
    assert load_token("ALIGNRAY_TEST_TOKEN", None) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    assert load_token("ALIGNRAY_TEST_TOKEN", str(token_file)) == "from-the-file-0123456789"
    with pytest.raises(AuthConfigError, match="does not exist"):
        load_token(None, str(tmp_path / "missing"))
    monkeypatch.setenv("ALIGNRAY_TEST_TOKEN", "short")
    with pytest.raises(AuthConfigError, match="at least 16"):
        load_token("ALIGNRAY_TEST_TOKEN", None)


def test_token_comparison_uses_the_digest():
    digest = token_digest(TOKEN)
    assert TOKEN not in digest
    assert token_matches(TOKEN, digest)
    assert not token_matches(TOKEN[:-1], digest) and not token_matches("", digest)


def test_no_token_is_refused_off_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert not is_loopback("myhost.example")
    check_bind_is_safe("127.0.0.1", None)
    check_bind_is_safe("0.0.0.0", token_digest(TOKEN))
    with pytest.raises(AuthConfigError, match="0.0.0.0 is reachable"):
        check_bind_is_safe("0.0.0.0", None)
    with pytest.raises(AuthConfigError, match="require_token"):
        check_bind_is_safe("127.0.0.1", None, require_token=True)


def test_batch_stats_count_requests_per_call():
    stats = BatchStats()
    stats.record(1, 1)
    stats.record(3, 5)
    summary = stats.as_dict()
    assert summary["batches"] == 2 and summary["requests"] == 4 and summary["items"] == 6
    assert summary["max_batch_requests"] == 3 and summary["mean_batch_requests"] == 2.0
    assert summary["batch_requests_histogram"] == {"1": 1, "3": 1}


class LengthScorer:
    """A stand-in model: the reward is the response's length."""

    async def score_pairs(self, prompts, responses):
        return ScoredItems([float(len(r)) for r in responses], [0.0] * len(responses), 1, len(responses))

    async def score_texts(self, texts):
        return ScoredItems([float(len(t)) for t in texts], [0.0] * len(texts), 1, len(texts))

    def model_info(self):
        return ModelInfo(name="length", version="v0", normalization=Normalization(mean=0.0, std=1.0),
                         max_length=64, max_items_per_request=LIMITS.max_items,
                         max_chars_per_item=LIMITS.max_chars_per_item, max_body_bytes=LIMITS.max_body_bytes)

    def stats(self):
        return StatsResponse(replica="test", **BatchStats().as_dict())


def asgi_call(app, method: str, path: str, body=None, headers: dict | None = None,
              client: str = "127.0.0.1", chunks: list[bytes] | None = None) -> tuple[int, dict]:
    """One request straight into an ASGI app; `chunks` sends a body without Content-Length."""
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    merged = {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}}
    header_list = [(k.encode(), v.encode()) for k, v in merged.items()]
    if chunks is None:
        header_list.append((b"content-length", str(len(raw)).encode()))
        chunks = [raw]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": header_list, "client": (client, 50000), "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(payload) if payload else {}


@pytest.fixture(scope="module")
def local_api():
    return build_reward_api(LengthScorer(), LIMITS, token_digest(TOKEN))


@pytest.mark.parametrize("body, message", [
    (b'{"prompts": ["a"', "body is not valid JSON"),
    ("just text", "expected {\"prompts\""),
    ({"prompts": ["a"]}, "responses: Field required"),
    ({"prompts": [1], "responses": ["b"]}, "prompts.0: Input should be a valid string"),
    ({"prompts": ["a", "b"], "responses": ["c"]}, "2 prompts but 1 responses"),
    ({"prompts": [], "responses": []}, "at least 1 item"),
    ([], "at least 1 item"),
    ([{"prompt": "a"}], "0.response: Field required"),
    ({"prompts": ["a"], "responses": ["b"], "extra": 1}, "extra: Extra inputs are not permitted"),
    (b'{"prompts": ["\\ud800"], "responses": ["b"]}', "prompts.0: text is not valid Unicode"),
    (b"[" * 4000, "error parsing the body"),  # deeper than the JSON parser recurses
])
def test_malformed_bodies_get_422_with_a_readable_message(local_api, body, message):
    status, payload = asgi_call(local_api, "POST", "/v1/score", body, AUTH)
    assert status in (400, 422) and message in payload["detail"], payload


@pytest.mark.parametrize("body, message", [
    ({"query": []}, "query: List should have at least 1 item"),
    ({"query": [""]}, "query.0: String should have at least 1 character"),
    ({"queries": ["a"]}, "query: Field required"),
])
def test_malformed_compatibility_bodies_get_422(local_api, body, message):
    status, payload = asgi_call(local_api, "POST", "/get_reward", body, AUTH)
    assert status == 422 and message in payload["detail"], payload


def test_a_body_not_sent_as_json_gets_415(local_api):
    status, payload = asgi_call(local_api, "POST", "/v1/score", {"prompts": ["a"], "responses": ["b"]},
                                {**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "Content-Type: application/json" in payload["detail"]
    charset = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    assert asgi_call(local_api, "POST", "/get_reward", {"query": ["ab"]}, charset)[0] == 200


def test_both_request_shapes_are_scored(local_api):
    status, columns = asgi_call(local_api, "POST", "/v1/score", {"prompts": ["p", "q"], "responses": ["ab", "c"]}, AUTH)
    assert status == 200 and columns["rewards"] == [2.0, 1.0] and columns["model_name"] == "length"
    status, items = asgi_call(local_api, "POST", "/v1/score",
                              [{"prompt": "p", "response": "ab"}, {"prompt": "q", "response": "c"}], AUTH)
    assert status == 200 and items["rewards"] == columns["rewards"]


def test_oversized_requests_get_413(local_api):
    status, payload = asgi_call(local_api, "POST", "/v1/score", {"prompts": ["a"] * 9, "responses": ["b"] * 9}, AUTH)
    assert status == 413 and "limit is 8" in payload["detail"]
    status, payload = asgi_call(local_api, "POST", "/get_reward", {"query": ["x" * 201]}, AUTH)
    assert status == 413 and "query[0] has 201 characters" in payload["detail"]
    status, payload = asgi_call(local_api, "POST", "/v1/score", b"x" * 5000, AUTH)
    assert status == 413 and "limit is 4096" in payload["detail"]
    # Without Content-Length the body is counted as it arrives.
    status, payload = asgi_call(local_api, "POST", "/v1/score", headers=AUTH, chunks=[b"x" * 3000, b"x" * 3000])
    assert status == 413 and "over" in payload["detail"]


def test_chunked_body_within_the_limit_reaches_the_app(local_api):
    body = json.dumps({"prompts": ["p"], "responses": ["abc"]}).encode()
    status, payload = asgi_call(local_api, "POST", "/v1/score", headers=AUTH, chunks=[body[:10], body[10:]])
    assert status == 200 and payload["rewards"] == [3.0]


def test_auth_is_checked_everywhere_but_healthz(local_api):
    for method, path in (("POST", "/v1/score"), ("POST", "/get_reward"), ("GET", "/v1/model"), ("GET", "/v1/stats")):
        status, _ = asgi_call(local_api, method, path, {"query": ["a"]})
        assert status == 401, path
        status, _ = asgi_call(local_api, method, path, {"query": ["a"]}, {"Authorization": f"Bearer {TOKEN}x"})
        assert status == 401, path
    assert asgi_call(local_api, "GET", "/healthz")[0] == 200


def test_without_auth_only_loopback_clients_are_answered():
    app = build_reward_api(LengthScorer(), LIMITS, None)
    body = {"prompts": ["p"], "responses": ["ab"]}
    assert asgi_call(app, "POST", "/v1/score", body)[0] == 200
    status, payload = asgi_call(app, "POST", "/v1/score", body, client="10.1.2.3")
    assert status == 403 and "loopback" in payload["detail"]


def test_serve_config_rejects_unknown_keys_and_unsafe_binds(monkeypatch):
    from alignray.actors.reward_server import build_reward_app, serve_config
    from alignray.serving.endpoint import deployment_options, http_options
    with pytest.raises(Exception, match="max_batch"):
        serve_config({"max_batch": 4})
    assert serve_config({"max_batch_size": "4"}).max_batch_size == 4
    scaled = deployment_options(serve_config({"autoscaling": True, "max_replicas": 3, "gpus_per_replica": 1}))
    assert scaled["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in scaled
    assert scaled["ray_actor_options"]["num_gpus"] == 1
    tls = http_options(serve_config({"host": "0.0.0.0", "ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"}), "serve")
    assert tls["ssl_certfile"] == "c.pem" and tls["host"] == "0.0.0.0"
    monkeypatch.delenv("ALIGNRAY_SERVE_TOKEN", raising=False)
    with pytest.raises(AuthConfigError, match="reachable"):
        build_reward_app(ServeConfig(model_path="anything", host="0.0.0.0"))
    with pytest.raises(ValueError, match="precision must be one of"):
        build_reward_app(ServeConfig(model_path="anything", precision="fp8"))


def test_serve_config_file_and_hydra_groups_are_valid():
    import yaml
    from hydra import compose, initialize_config_dir
    from ray.serve.schema import ServeDeploySchema

    from alignray.workflows.common import CONFIG_PATH
    from alignray.actors.reward_server import serve_config
    config_file = Path(__file__).resolve().parent.parent / "cluster" / "serve" / "serve_config.yaml"
    document = yaml.safe_load(config_file.read_text())
    application = ServeDeploySchema(**document).applications[0]
    args = serve_config(application.args)
    assert application.import_path == "alignray.workflows.serve:app_builder"
    assert args.host == document["http_options"]["host"] and args.require_token
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        assert compose(config_name="config", overrides=["serve=gpu"]).serve.gpus_per_replica == 1
        public = compose(config_name="config", overrides=["serve=public"]).serve
        assert public.host == "0.0.0.0" and public.require_token


# ---------------------------------------------------------------- the real Serve app
APP_NAME = "alignray-reward-test"
MEAN, STD = 0.25, 2.0
PROMPTS = ["I love the new", "Flying with this airline", "Self-driving cars are"]
RESPONSES = ["phone, it is great", "was a nightmare again", "the future, maybe"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_base_model, tmp_path_factory):
    """A reward model from the tiny base model: an untrained head, but stored normalisation."""
    import torch

    from alignray.reward.model import init_reward_model, save_reward_model
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model)
    return save_reward_model(model, tokenizer, tmp_path_factory.mktemp("rm") / "tiny-rm", MEAN, STD)


@pytest.fixture(scope="module")
def server(ray_cluster, reward_model_dir, tmp_path_factory):
    from ray import serve

    from alignray.actors.reward_server import build_reward_app
    from alignray.serving.endpoint import http_options
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    # A long batch wait makes concurrent clients land in one batch on a busy machine.
    cfg = ServeConfig(model_path=str(reward_model_dir), port=port, token_env=None, token_file=str(token_file),
                      max_batch_size=16, batch_wait_timeout_s=0.25, max_items_per_request=8,
                      max_chars_per_item=500, max_body_bytes=16 * 1024, cpus_per_replica=0)
    serve.start(http_options=http_options(cfg, "serve"))
    serve.run(build_reward_app(cfg), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete(APP_NAME)
    serve.shutdown()


def post(url, path, body, headers=AUTH, **kwargs):
    return requests.post(url + path, json=body, headers=headers, timeout=60, **kwargs)


def test_http_score_equals_in_process_score(server, reward_model_dir):
    from alignray.reward.model import load_reward_model
    expected = load_reward_model(reward_model_dir, device="cpu").score(PROMPTS, RESPONSES).tolist()
    reply = post(server, "/v1/score", {"prompts": PROMPTS, "responses": RESPONSES})
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    assert payload["rewards"] == pytest.approx(expected, abs=1e-5)
    assert payload["disagreement"] == [0.0] * len(PROMPTS)  # one model disagrees with nobody
    info = requests.get(server + "/v1/model", headers=AUTH, timeout=30).json()
    assert payload["model_name"] == info["name"] == "tiny-rm" and payload["model_version"] == info["version"]
    assert info["normalization"] == {"mean": MEAN, "std": STD}


def test_compatibility_route_scores_full_texts(server, reward_model_dir):
    from alignray.reward.model import load_reward_model, reward_texts
    tokenizer = load_reward_model(reward_model_dir, device="cpu").tokenizer
    queries = reward_texts(tokenizer, PROMPTS, RESPONSES)
    # OpenRLHF also sends prompts and labels; they are ignored.
    reply = post(server, "/get_reward", {"query": queries, "prompts": PROMPTS, "labels": ["", "", ""]})
    assert reply.status_code == 200, reply.text
    pairs = post(server, "/v1/score", {"prompts": PROMPTS, "responses": RESPONSES}).json()["rewards"]
    assert set(reply.json()) == {"rewards"} and reply.json()["rewards"] == pytest.approx(pairs, abs=1e-5)


def test_reward_client_talks_to_the_endpoint(server):
    from alignray.reward.client import RewardClient, RewardEndpointError
    client = RewardClient(server, token=TOKEN, timeout=30, retries=1, max_items_per_request=2)
    pairs = post(server, "/v1/score", {"prompts": PROMPTS, "responses": RESPONSES}).json()
    assert client.score(PROMPTS, RESPONSES) == pytest.approx(pairs["rewards"], abs=1e-5)
    assert (client.model_name, client.model_version) == (pairs["model_name"], pairs["model_version"])
    with pytest.raises(RewardEndpointError, match="401"):
        RewardClient(server, token="wrong-token-0123456789", retries=0).score(PROMPTS, RESPONSES)


def test_token_is_required_over_http(server):
    body = {"prompts": PROMPTS, "responses": RESPONSES}
    assert post(server, "/v1/score", body, headers={}).status_code == 401
    wrong = post(server, "/get_reward", {"query": ["x"]}, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert requests.get(server + "/healthz", timeout=30).json() == {"status": "ok"}
    schema = requests.get(server + "/openapi.json", timeout=30).json()
    assert {"/v1/score", "/get_reward", "/v1/model", "/healthz"} <= set(schema["paths"])


def test_oversized_and_malformed_bodies_over_http(server):
    too_big = post(server, "/v1/score", {"prompts": ["x" * 400] * 50, "responses": ["y"] * 50})
    assert too_big.status_code == 413 and "limit is 16384" in too_big.json()["detail"]
    too_many = post(server, "/v1/score", {"prompts": ["x"] * 9, "responses": ["y"] * 9})
    assert too_many.status_code == 413 and "limit is 8" in too_many.json()["detail"]
    not_json = requests.post(server + "/v1/score", data=b"{oops", headers={**AUTH, "Content-Type": "application/json"},
                             timeout=30)
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"]
    wrong_type = post(server, "/v1/score", {"prompts": [None], "responses": ["y"]})
    assert wrong_type.status_code == 422 and "prompts.0" in wrong_type.json()["detail"]


def test_concurrent_clients_are_batched_together(server):
    def one_client(i: int) -> dict:
        return post(server, "/v1/score", {"prompts": [PROMPTS[i % 3]], "responses": [RESPONSES[i % 3]]}).json()

    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(one_client, range(12)))
    assert max(reply["batch_requests"] for reply in replies) > 1
    # Batching does not change a score.
    assert len({round(reply["rewards"][0], 5) for reply in replies}) == 3
    stats = requests.get(server + "/v1/stats", headers=AUTH, timeout=30).json()
    assert stats["max_batch_requests"] > 1 and stats["batches"] < stats["requests"]


def test_a_dead_replica_is_restarted(server):
    import ray
    before = requests.get(server + "/v1/stats", headers=AUTH, timeout=30).json()["replica"]
    # Serve names a replica's actor SERVE_REPLICA::<app>#<deployment>#<replica id>.
    replica = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#RewardModelServer#{before}", namespace="serve")
    ray.kill(replica, no_restart=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            reply = requests.get(server + "/v1/stats", headers=AUTH, timeout=5)
            if reply.status_code == 200 and reply.json()["replica"] != before:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        pytest.fail("Serve did not replace the killed replica within 90 s")
    assert post(server, "/v1/score", {"prompts": PROMPTS[:1], "responses": RESPONSES[:1]}).status_code == 200


@pytest.fixture(scope="module")
def ensemble_model_dir(tiny_base_model, tmp_path_factory):
    """Two reward models with different heads (seeds 0 and 1) as one ensemble, normalised
    on the test texts."""
    import torch

    from alignray.reward.model import (assemble_reward_ensemble, init_reward_model, load_reward_model,
                                       reference_statistics, save_normalization, save_reward_model)
    folder = tmp_path_factory.mktemp("ensemble")
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, tokenizer = init_reward_model(tiny_base_model)
        members.append(save_reward_model(model, tokenizer, folder / f"trained-{seed}", 0.0, 1.0))
    ensemble = load_reward_model(assemble_reward_ensemble(members, folder / "tiny-ensemble"), device="cpu")
    save_normalization(ensemble, *reference_statistics(ensemble, PROMPTS, RESPONSES))
    return folder / "tiny-ensemble"


def test_an_ensemble_scores_with_mean_and_disagreement_through_the_actor_and_the_endpoint(
        server, ensemble_model_dir, tmp_path):
    import ray
    import torch
    from ray import serve

    from alignray.actors.reward import RewardActor
    from alignray.config.ppo import PPORewardConfig
    from alignray.reward.client import RewardClient
    from alignray.reward.model import load_reward_model, reward_texts
    from alignray.actors.reward_server import build_reward_app

    ensemble = load_reward_model(ensemble_model_dir, device="cpu")
    members = ensemble.member_scores(reward_texts(ensemble.tokenizer, PROMPTS, RESPONSES))
    assert members.shape == (2, 3) and not torch.allclose(members[0], members[1])  # two different heads
    raw_mean, raw_std = members.mean(dim=0), members.std(dim=0, unbiased=False)
    assert raw_std.min() > 0

    # The PPO reward actor, as a Ray actor: raw mean and disagreement.
    actor = ray.remote(RewardActor).remote(PPORewardConfig(kind="reward_model"), str(ensemble_model_dir))
    reward, disagreement = ray.get(actor.score_with_disagreement.remote(PROMPTS, RESPONSES))
    torch.testing.assert_close(reward, raw_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(disagreement, raw_std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ray.get(actor.score.remote(PROMPTS, RESPONSES)), raw_mean, atol=1e-5, rtol=1e-5)
    ray.kill(actor)

    # The endpoint, as a second app on the module's Serve instance: normalised mean and disagreement.
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = int(server.rsplit(":", 1)[1])
    cfg = ServeConfig(model_path=str(ensemble_model_dir), port=port, token_env=None, token_file=str(token_file),
                      cpus_per_replica=0)
    serve.run(build_reward_app(cfg), name=APP_NAME + "-ensemble", route_prefix="/ensemble")
    try:
        payload = post(server, "/ensemble/v1/score", {"prompts": PROMPTS, "responses": RESPONSES}).json()
        expected = ((raw_mean - ensemble.mean) / ensemble.std).tolist()
        assert payload["rewards"] == pytest.approx(expected, abs=1e-5)
        assert payload["disagreement"] == pytest.approx((raw_std / ensemble.std).tolist(), abs=1e-5)
        info = requests.get(server + "/ensemble/v1/model", headers=AUTH, timeout=30).json()
        assert info["members"] == 2 and info["normalization"] == {"mean": ensemble.mean, "std": ensemble.std}
        client = RewardClient(server + "/ensemble", token=TOKEN, timeout=30, retries=1)
        rewards, spread = client.score_with_disagreement(PROMPTS, RESPONSES)
        assert rewards == pytest.approx(expected, abs=1e-5) and spread == pytest.approx(payload["disagreement"])
    finally:
        serve.delete(APP_NAME + "-ensemble")
