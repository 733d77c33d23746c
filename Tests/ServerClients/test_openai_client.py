"""facet serve through real clients: the official `openai` package, `requests` and curl."""
import concurrent.futures
import json
import os
import subprocess
import time

import openai
import pytest
import requests

from conftest import BASE, ROOT, Server, facet_run

QUESTION = "What is the capital of France?"


def chat(client, model, content=QUESTION, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 32), temperature=kw.pop("temperature", 0), **kw)


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == BASE and "fr" in ids


def test_chat_answers_like_the_reference(client):
    r = chat(client, BASE)
    assert r.choices[0].message.content == "The capital of France is Paris."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens == 37


def test_adapter_changes_the_answer(client):
    assert chat(client, "fr").choices[0].message.content != chat(client, BASE).choices[0].message.content


def test_server_output_equals_facet_run(client):
    """Same prompt, adapter and seed: the server and `facet run` give the same text."""
    for model, lora in [(BASE, []), ("fr", ["--lora_dir", os.path.join(ROOT, "adapters", "fr"), "--lora_task_uids", "0"])]:
        served = chat(client, model, temperature=0.8, seed=1234, max_tokens=24).choices[0].message.content
        ran = facet_run("--chat", "--input_text", QUESTION, "--max_output_len", "24", "--temperature", "0.8", "--top_k", "0",
                        "--top_p", "1", "--seed", "1234", *lora)
        assert served == ran[0], (model, served, ran)
    greedy = client.completions.create(model=BASE, prompt="The quick brown fox", max_tokens=12, temperature=0).choices[0].text
    assert greedy == facet_run("--input_text", "The quick brown fox", "--max_output_len", "12")[0]


def test_streaming_chat_and_completion(client):
    stream = client.chat.completions.create(model="fr", messages=[{"role": "user", "content": QUESTION}], max_tokens=32,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(pieces) == chat(client, "fr").choices[0].message.content
    assert reasons == ["stop"] and usage.completion_tokens > 0
    text = "".join(c.choices[0].text for c in client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=10,
                                                                         temperature=0, stream=True))
    assert text == client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=10, temperature=0).choices[0].text


def test_mixed_adapters_concurrently(client):
    models = [BASE, "fr"] * 8
    expected = {m: chat(client, m).choices[0].message.content for m in set(models)}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda m: chat(client, m).choices[0].message.content, models))
    assert answers == [expected[m] for m in models]


def test_n_logprobs_stop_and_seed(client):
    r = client.completions.create(model=BASE, prompt="1, 2, 3,", max_tokens=8, temperature=0.9, n=3, seed=7, logprobs=2)
    assert len(r.choices) == 3
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and all(x <= 0 for x in lp.token_logprobs)
    again = client.completions.create(model=BASE, prompt="1, 2, 3,", max_tokens=8, temperature=0.9, n=3, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    s = client.completions.create(model=BASE, prompt="1, 2, 3,", max_tokens=20, temperature=0, stop=[" 6"])
    assert " 6" not in s.choices[0].text and s.choices[0].finish_reason == "stop"
    c = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": QUESTION}], max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=2)
    assert len(c.choices[0].logprobs.content) == 5 and len(c.choices[0].logprobs.content[0].top_logprobs) == 2


def test_errors_have_openai_shape_and_status(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "no-such-adapter")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=BASE, prompt="x", max_tokens=100000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=BASE, prompt="x", temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=BASE, prompt="x", frequency_penalty=0.5)
    r = requests.post(server.url + "/v1/completions", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(server.url + "/v1/completions", data=b"{" + b" " * (5 << 20) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    # The server is still up.
    assert requests.get(server.url + "/health").status_code == 200


def test_cancellation_mid_stream_frees_the_request(client, server):
    stream = client.chat.completions.create(model="fr", messages=[{"role": "user", "content": "Tell me a long story."}],
                                            max_tokens=500, temperature=0.7, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 20
    running = None
    while time.time() < deadline:
        metrics = requests.get(server.url + "/metrics").text
        running = [l for l in metrics.splitlines() if l.startswith("facet_requests_running ")]
        if running and float(running[0].split()[1]) == 0:
            break
        chat(client, BASE, max_tokens=1)  # a step, so the gauge refreshes
        time.sleep(0.2)
    assert running and float(running[0].split()[1]) == 0
    assert chat(client, "fr").choices[0].message.content


def test_load_and_unload_while_serving(client, server):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(chat, client, "fr", max_tokens=48) for _ in range(4)]
        r = requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "de", "lora_path": "de"})
        assert r.status_code == 200, r.text
        assert "de" in [m.id for m in client.models.list().data]
        german = chat(client, "de").choices[0].message.content
        assert german and german != chat(client, BASE).choices[0].message.content
        for f in busy:
            assert f.result().choices[0].message.content
    # Refused: outside the adapter root, duplicate name, unknown name.
    assert requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "../../etc"}).status_code == 400
    assert requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "de", "lora_path": "de"}).status_code == 400
    assert requests.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "de"}).status_code == 200
    assert requests.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "de"}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        chat(client, "de")


def test_metrics_expose_the_engine(client, server):
    chat(client, "fr", max_tokens=4)
    text = requests.get(server.url + "/metrics").text
    for name in ["facet_requests_running", "facet_requests_waiting", "facet_kv_cache_blocks_used", "facet_generation_tokens_total",
                 "facet_time_to_first_token_seconds_bucket", "facet_time_per_output_token_seconds", "facet_lora_adapters_resident",
                 'facet_requests_total{model="fr"}']:
        assert name in text, name


def metric(server, name):
    for line in requests.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prefix_cache_serves_a_shared_system_prompt(client, server):
    """Chats that share a long system prompt reuse its cached KV blocks (the hit counters in
    /metrics grow) and answer exactly as a server started with --no-prefix-cache does."""
    system = "You are a careful geography tutor. " * 12 + "Answer in one short sentence."
    questions = ["What is the capital of France?", "What is the capital of Germany?", "What is the capital of Italy?"]

    def answers(c):
        out = []
        for model in (BASE, "fr"):
            for q in questions:
                r = c.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                              messages=[{"role": "system", "content": system}, {"role": "user", "content": q}])
                out.append(r.choices[0].message.content)
        return out

    queried, hits = metric(server, "facet_prefix_cache_queries_total"), metric(server, "facet_prefix_cache_hits_total")
    cached = answers(client)
    queried, hits = metric(server, "facet_prefix_cache_queries_total") - queried, metric(server, "facet_prefix_cache_hits_total") - hits
    # The system prompt (over 100 tokens) is computed once per adapter; each later question
    # under the same adapter finds at least its whole blocks.
    assert queried > 600 and hits >= 4 * 96, (queried, hits)
    assert 0 < metric(server, "facet_prefix_cache_hit_ratio") <= 1
    from openai import OpenAI
    s = Server(extra=["--no-prefix-cache"])
    try:
        c = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert answers(c) == cached
        assert metric(s, "facet_prefix_cache_hits_total") == 0
    finally:
        s.stop()


def test_curl_and_api_key():
    s = Server(api_key="sekrit")
    try:
        base = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", s.url + "/v1/models"]
        assert subprocess.run(base, capture_output=True, text=True).stdout == "401"
        assert subprocess.run(base + ["-H", "Authorization: Bearer sekrit"], capture_output=True, text=True).stdout == "200"
        out = subprocess.run(["curl", "-sN", s.url + "/v1/chat/completions", "-H", "Authorization: Bearer sekrit",
                              "-H", "content-type: application/json", "-d",
                              json.dumps({"model": "fr", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16,
                                          "temperature": 0, "stream": True})], capture_output=True, text=True).stdout
        events = [l[6:] for l in out.splitlines() if l.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1] if json.loads(e)["choices"])
        assert subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", s.url + "/health"], capture_output=True, text=True).stdout == "200"
    finally:
        s.stop()


@pytest.mark.parametrize("mode", [["--compute", "int8"], ["--compute", "bf16"], ["--kv-cache-dtype", "bf16"]])
def test_numerics_modes_reach_the_server_as_facet_run(server, mode):
    """`--compute int8|bf16` and `--kv-cache-dtype bf16` reach the engine in both commands: same
    greedy text for the base and an adapter; and a bf16 cache holds twice the KV blocks in
    the same memory."""
    from openai import OpenAI
    s = Server(extra=mode)
    try:
        c = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for model, lora in [(BASE, []), ("fr", ["--lora_dir", os.path.join(ROOT, "adapters", "fr"), "--lora_task_uids", "0"])]:
            served = c.completions.create(model=model, prompt="The quick brown fox", max_tokens=12, temperature=0).choices[0].text
            assert served == facet_run(*mode, "--input_text", "The quick brown fox", "--max_output_len", "12", *lora)[0]
        if mode[0] == "--kv-cache-dtype":
            import re
            blocks = {}
            for log in (open(server.log.name).read(), open(s.log.name).read()):
                m = re.search(r"KV cache: (\d+) blocks of 16 in (\w+)", log)
                assert m, log[-2000:]
                blocks[m.group(2)] = int(m.group(1))
            assert blocks["bf16"] // 2 == blocks["fp32"], blocks
    finally:
        s.stop()
