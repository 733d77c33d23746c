"""Hostile but ordinary input against `facet serve`: each test reproduces one way the server
was once broken (crafted files, resets, refused loads, bad numbers, stale metrics, limits,
role and special-token injection, error shapes) and checks that it now holds."""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest
import requests

from conftest import BASE, FACET, ROOT, Server

CHAT = {"model": BASE, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, "temperature": 0}


def alive(server):
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def make_adapter(server, name, mutate_config=None, mutate_weights=None):
    """A copy of the demo fr adapter under the server's adapter root, optionally altered."""
    path = os.path.join(server.adapter_root, name)
    shutil.copytree(os.path.join(ROOT, "adapters", "fr"), path)
    if mutate_config:
        cfg_path = os.path.join(path, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        mutate_config(cfg)
        json.dump(cfg, open(cfg_path, "w"))
    if mutate_weights:
        st = os.path.join(path, "adapter_model.safetensors")
        data = bytearray(open(st, "rb").read())
        mutate_weights(data)
        open(st, "wb").write(data)
    return path


def load(server, name, path=None):
    return requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path or name}, timeout=60)


def model_ids(server):
    return [m["id"] for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"]]


def metric(server, name):
    for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


# 1. A crafted safetensors header (shape product overflows to a small byte count).
def test_crafted_safetensors_is_refused_and_the_server_stays_up(server):
    path = make_adapter(server, "crafted")
    header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                         {"dtype": "F32", "shape": [4611686018427387904 + 4608, 1], "data_offsets": [0, 18432]}}).encode()
    with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"\0" * 18432)
    r = load(server, "crafted")
    assert r.status_code == 400, r.text
    assert "shape" in r.json()["error"]["message"]
    alive(server)
    assert "crafted" not in model_ids(server)


# 4. Adapters with NaN or huge weights, or an absurd lora_alpha, are refused as data.
def test_nan_huge_weights_and_alpha_are_refused(server):
    def poison(value_bytes_by_dtype):
        def mutate(data):
            n = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8:8 + n])
            name = sorted(k for k in header if k != "__metadata__")[0]
            entry = header[name]
            start = 8 + n + entry["data_offsets"][0]
            value = value_bytes_by_dtype[entry["dtype"]]
            data[start:start + len(value)] = value
        return mutate

    nan = {"F32": struct.pack("<I", 0x7FC00000), "BF16": struct.pack("<H", 0x7FC0), "F16": struct.pack("<H", 0x7E00)}
    huge = {"F32": struct.pack("<f", 1e30), "BF16": struct.pack("<H", 0x7149), "F16": struct.pack("<H", 0x7C00)}  # f16 has no 1e30: inf
    make_adapter(server, "nan", mutate_weights=poison(nan))
    r = load(server, "nan")
    assert r.status_code == 400 and "finite" in r.text, r.text
    make_adapter(server, "huge", mutate_weights=poison(huge))
    r = load(server, "huge")
    assert r.status_code == 400 and "finite" in r.text, r.text
    make_adapter(server, "alpha", mutate_config=lambda c: c.update(lora_alpha=1e300))
    r = load(server, "alpha")
    assert r.status_code == 400 and "lora_alpha" in r.text, r.text
    assert not {"nan", "huge", "alpha"} & set(model_ids(server))
    alive(server)


# 5. A file symlink inside the adapter root that points outside it is not followed.
def test_symlink_out_of_the_adapter_root_is_refused(server):
    path = make_adapter(server, "linked")
    os.remove(os.path.join(path, "adapter_config.json"))
    os.symlink("/etc/passwd", os.path.join(path, "adapter_config.json"))
    r = load(server, "linked")
    assert r.status_code == 400 and "outside the adapter root" in r.text, r.text
    assert "linked" not in model_ids(server)


# 6. Token ids that are not exact int32 integers are refused, not wrapped or truncated.
@pytest.mark.parametrize("bad", [4294967301, 1.5, True, -1, "x"])
def test_prompt_token_ids_must_be_exact(server, bad):
    r = requests.post(server.url + "/v1/completions", json={"model": BASE, "prompt": [1, bad, 3], "max_tokens": 1}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"


# 9. Roles are the template's; special tokens typed in content stay text.
def test_chat_roles_are_limited(server):
    r = requests.post(server.url + "/v1/chat/completions",
                      json={**CHAT, "messages": [{"role": "hacker", "content": "hi"}]}, timeout=30)
    assert r.status_code == 400 and "role" in r.text, r.text

    # A user or system turn needs content (an assistant's may be null, as in OpenAI's API).
    for role in ("user", "system"):
        r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "messages": [{"role": role}]}, timeout=30)
        assert r.status_code == 400 and "content" in r.json()["error"]["message"], r.text
    r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "again"}]}, timeout=60)
    assert r.status_code == 200, r.text


# An integer no 64-bit field holds is named, not called invalid JSON; an infinite
# temperature is refused as not finite.
def test_out_of_range_numbers_name_their_field(server):
    r = requests.post(server.url + "/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 1, "seed": 2**70}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed" and "range" in r.text, r.text
    r = requests.post(server.url + "/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 1, "temperature": 1e300}, timeout=30)
    assert r.status_code == 400 and "finite" in r.text, r.text


def test_special_tokens_in_content_are_text(server):
    def prompt_tokens(content):
        r = requests.post(server.url + "/v1/chat/completions",
                          json={**CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": content}]}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]
    plain = prompt_tokens("hi")
    # As text, "<|im_end|>" is several ordinary tokens; parsed as special it would be one.
    assert prompt_tokens("hi<|im_end|>") > plain + 1


# 10. Unknown routes answer a JSON 404; errors name the right parameter.
def test_unknown_route_and_param_names(server):
    r = requests.get(server.url + "/v1/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 30}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    long = {**CHAT, "max_tokens": None, "messages": [{"role": "user", "content": "word " * 9000}]}
    r = requests.post(server.url + "/v1/chat/completions", json=long, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text


# A server with tight limits for the slot, memory, metrics and timeout reproductions.
@pytest.fixture(scope="module")
def strict():
    s = Server(extra=["--max-pending", "4", "--max-lora-memory", "20MB", "--request-timeout", "2", "--keep-alive-timeout", "30"])
    yield s
    s.stop()


def stream_request(port, body):
    sock = socket.create_connection(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(predicate, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# 2. Streaming clients that reset right after sending must not leak their slots.
def test_reset_streams_give_their_slots_back(strict):
    body = {**CHAT, "stream": True, "max_tokens": 200}
    for _ in range(20):
        reset(stream_request(strict.port, body))
    ok = lambda: requests.post(strict.url + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    assert wait_for(ok, 60), "the server still answers 429 after the reset clients left"
    assert wait_for(lambda: metric(strict, "facet_requests_running") == 0 and metric(strict, "facet_kv_cache_blocks_used") == 0)


# 7. After cancellations the gauges return to idle without another request, and the
# cancelled work is counted.
def test_metrics_after_cancellation(strict):
    before = metric(strict, "facet_requests_cancelled_total") or 0
    # Requests of earlier tests may still hold the strict server's few slots on a busy host:
    # send until the stream starts (200), not a 429.
    deadline = time.time() + 30
    while True:
        sock = stream_request(strict.port, {**CHAT, "stream": True, "max_tokens": 300, "ignore_eos": True})
        head = sock.recv(4096)  # the response has started
        if b" 200 " in head.split(b"\r\n", 1)[0] or time.time() > deadline:
            break
        sock.close()
        time.sleep(0.5)
    assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
    time.sleep(0.5)
    reset(sock)
    assert wait_for(lambda: metric(strict, "facet_requests_running") == 0 and metric(strict, "facet_kv_cache_blocks_used") == 0, 20)
    assert (metric(strict, "facet_requests_cancelled_total") or 0) >= before + 1


# 3. A load refused for memory (every resident adapter in use) registers nothing.
def test_refused_load_is_not_registered(strict):
    os.makedirs(os.path.join(strict.adapter_root, "de2"), exist_ok=True)
    for f in os.listdir(os.path.join(ROOT, "adapters", "de")):
        shutil.copy(os.path.join(ROOT, "adapters", "de", f), os.path.join(strict.adapter_root, "de2", f))
    # fr is pinned by a long streaming request; de (19 MB) does not fit beside it in 20 MB.
    sock = stream_request(strict.port, {**CHAT, "model": "fr", "stream": True, "max_tokens": 400, "ignore_eos": True})
    sock.recv(4096)
    try:
        r = load(strict, "de2")
        assert r.status_code == 503, r.text
        assert "de2" not in model_ids(strict)
        # Asking for it by name tries the same load on first use: refused the same way.
        r = requests.post(strict.url + "/v1/chat/completions", json={**CHAT, "model": "de2"}, timeout=30)
        assert r.status_code == 503, r.text
        assert "de2" not in model_ids(strict)
    finally:
        reset(sock)
    # Once fr is free, the same load succeeds (fr is evicted, not lost).
    assert wait_for(lambda: load(strict, "de2").status_code == 200, 30)
    assert "de2" in model_ids(strict)
    assert requests.post(strict.url + "/v1/chat/completions", json={**CHAT, "model": "fr"}, timeout=60).status_code == 200


# 8. A stalled request body is answered 408 after --request-timeout.
def test_stalled_body_times_out(strict):
    sock = socket.create_connection(("127.0.0.1", strict.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
    sock.settimeout(15)
    started = time.time()
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.time() - started < 10
    alive(strict)


# 8. Bad limits are refused at start instead of misbehaving later.
@pytest.mark.parametrize("args,field", [(["--port", "70000"], "port"), (["--max-model-len", "0"], "max-model-len"),
                                        (["--request-timeout", "-1"], "request-timeout")])
def test_bad_serve_options_are_refused(args, field):
    out = subprocess.run([FACET, "serve", *args], capture_output=True, text=True, timeout=120, env={**os.environ, "FACET_HOME": ROOT})
    assert out.returncode != 0
    assert field in out.stderr, out.stderr


# 8. SIGTERM drains for at most --drain-timeout; a second signal ends at once.
@pytest.mark.parametrize("second_signal", [True, False])
def test_sigterm_drain_is_bounded(second_signal):
    s = Server(extra=["--drain-timeout", "3"])
    try:
        sock = stream_request(s.port, {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True})
        sock.recv(4096)
        started = time.time()
        s.proc.send_signal(signal.SIGTERM)
        if second_signal:
            time.sleep(0.5)
            s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=30)
        elapsed = time.time() - started
        assert elapsed < (3 if second_signal else 15), elapsed
        sock.close()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.log.close()


# Faults: an adapter whose files are removed or corrupted while registered (and evicted)
# gives a clean error when it must be reloaded, and works again once the files are back.
def test_adapter_files_removed_or_corrupted_while_registered(strict):
    path = make_adapter(strict, "fragile")
    assert load(strict, "fragile").status_code == 200
    saved = open(os.path.join(path, "adapter_model.safetensors"), "rb").read()
    # Evict it: a 19 MB adapter needs the whole 20 MB budget.
    big = os.path.join(strict.adapter_root, "big")
    if not os.path.exists(big):
        shutil.copytree(os.path.join(ROOT, "adapters", "de"), big)
    requests.post(strict.url + "/v1/unload_lora_adapter", json={"lora_name": "big"}, timeout=30)
    assert wait_for(lambda: load(strict, "big").status_code == 200, 30)
    ask = lambda: requests.post(strict.url + "/v1/chat/completions", json={**CHAT, "model": "fragile"}, timeout=60)
    for damage in ("truncate", "remove"):
        st = os.path.join(path, "adapter_model.safetensors")
        if damage == "truncate":
            open(st, "wb").write(saved[:100])
        else:
            shutil.rmtree(path)
        r = ask()
        assert 400 <= r.status_code < 600 and r.status_code != 500, r.text
        assert "error" in r.json() and r.json()["error"]["message"]
        alive(strict)
        os.makedirs(path, exist_ok=True)
        shutil.copy(os.path.join(ROOT, "adapters", "fr", "adapter_config.json"), path)
        open(st, "wb").write(saved)
        # Put back: reloading works (big is evicted in turn).
        assert wait_for(lambda: ask().status_code == 200, 30)
        assert wait_for(lambda: requests.post(strict.url + "/v1/chat/completions", json={**CHAT, "model": "big"},
                                              timeout=60).status_code == 200, 30)


# Faults: a client that never reads its stream holds only its own request.
def test_client_that_never_reads(strict):
    sock = stream_request(strict.port, {**CHAT, "stream": True, "max_tokens": 500, "ignore_eos": True})
    try:
        r = requests.post(strict.url + "/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 200
    finally:
        sock.close()
    assert wait_for(lambda: metric(strict, "facet_requests_running") == 0 and metric(strict, "facet_kv_cache_blocks_used") == 0, 60)


# Faults: SIGTERM while the model is still loading ends the process promptly.
def test_sigterm_during_load():
    proc = subprocess.Popen([FACET, "serve", "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "FACET_HOME": ROOT})
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)  # raises if the process is still there: a load must not ignore SIGTERM


# Fuzzing of request bodies, structure-aware: every field of the completion and chat
# schemas gets values of random types and ranges. Whatever arrives, the answer is a 200 or a
# clean 4xx with OpenAI's error shape, never a 5xx, and the server stays up.
def test_request_body_fuzz(server):
    import random
    rng = random.Random(1234)
    weird = [None, True, False, -1, 0, 1, 2, 3, 2 ** 31, 2 ** 63, -2 ** 63, 1.5, -0.0, 1e308, "x", "", "\u0000", [], {}, [1, "a"],
             {"a": 1}, [[1, 2], [3]], "<|im_end|>"]
    fields = {
        "model": [BASE, "fr", "nope", ""], "prompt": ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
        "messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                     [{"role": "system"}], [{"content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}]],
        "max_tokens": [1, 2, 3], "temperature": [0, 0.5, 2], "top_p": [0.1, 1], "top_k": [-1, 0, 5], "min_p": [0, 0.5],
        "repetition_penalty": [1, 1.2], "seed": [0, 7], "stop": ["\n", ["a", "b"]], "n": [1, 2], "logprobs": [True, 2],
        "top_logprobs": [0, 3], "stream": [False, True], "echo": [False], "ignore_eos": [False],
        "stream_options": [{"include_usage": True}], "frequency_penalty": [0, 0.5], "presence_penalty": [0],
        "logit_bias": [{}, {"1": 5}], "response_format": [{"type": "text"}, {"type": "json_object"}], "best_of": [1, 2],
        "lora_task_id": [1], "suffix": ["x"], "tools": [[]], "user": ["u"],
    }
    statuses = {}
    for i in range(300):
        chat = rng.random() < 0.5
        body = {"model": BASE, "max_tokens": 2}
        body["messages" if chat else "prompt"] = "hi" if not chat else [{"role": "user", "content": "hi"}]
        for key in rng.sample(sorted(fields), rng.randint(0, 6)):
            body[key] = rng.choice(fields[key] + weird) if rng.random() < 0.5 else rng.choice(fields[key])
        if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool) and body["max_tokens"] > 3:
            body["max_tokens"] = rng.choice([2 ** 31, 10 ** 7])  # too large: refused, never run
        route = "/v1/chat/completions" if chat else "/v1/completions"
        r = requests.post(server.url + route, json=body, timeout=120)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text[:300])
        if r.status_code >= 400:
            assert "error" in r.json() and r.json()["error"]["message"], (body, r.text[:300])
    alive(server)
    assert statuses.get(200, 0) > 10 and sum(v for k, v in statuses.items() if k >= 400) > 10, statuses


# One request model: a field that would change the result is refused by name, never ignored.
@pytest.mark.parametrize("field,value", [("lora_task_id", 1), ("lora_weights", [[1.0]]), ("lora_config", [[0, 0, 8]]),
                                         ("frequency_penalty", 0.5), ("logit_bias", {"1": 5}), ("min_tokens", 3)])
def test_unsupported_fields_are_refused_by_name(server, field, value):
    r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, field: value}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_bad_words(server):
    base = requests.post(server.url + "/v1/chat/completions", json=CHAT, timeout=60).json()["choices"][0]["message"]["content"]
    assert "Paris" in base
    r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 12, "bad_words": [" Paris", "Paris"]}, timeout=60)
    assert r.status_code == 200 and "Paris" not in r.json()["choices"][0]["message"]["content"], r.text


# Scale-out groundwork: adapters under --adapter-root load on first use (once, however many
# requests ask together), and /metrics carries the names the inference gateway reads.
def test_adapters_load_on_first_use_once(server):
    import concurrent.futures
    shutil.copytree(os.path.join(ROOT, "adapters", "de"), os.path.join(server.adapter_root, "firstuse"))
    before = metric(server, "facet_lora_first_use_loads_total")
    body = {**CHAT, "model": "firstuse"}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: requests.post(server.url + "/v1/chat/completions", json=body, timeout=120).status_code, range(6)))
    assert codes == [200] * 6, codes
    assert "firstuse" in model_ids(server)
    assert metric(server, "facet_lora_first_use_loads_total") == before + 1
    # Unloaded by the operator: not loaded on first use again until loaded explicitly.
    assert requests.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "firstuse"}, timeout=30).status_code == 200
    assert requests.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 404
    for name in ["nope", "..", "../firstuse"]:
        r = requests.post(server.url + "/v1/chat/completions", json={**CHAT, "model": name}, timeout=30)
        assert r.status_code == 404, (name, r.text)


def test_gateway_metrics(server):
    sock = stream_request(server.port, {**CHAT, "model": "fr", "stream": True, "max_tokens": 300, "ignore_eos": True})
    sock.recv(4096)
    try:
        assert wait_for(lambda: 'running_lora_adapters="fr"' in requests.get(server.url + "/metrics", timeout=10).text, 20)
        text = requests.get(server.url + "/metrics", timeout=10).text
        for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                     'vllm:lora_requests_info{max_lora="16"']:
            assert name in text, name
        assert metric(server, "vllm:num_requests_running") >= 1 and 0 < metric(server, "vllm:kv_cache_usage_perc") <= 1
    finally:
        reset(sock)
    assert wait_for(lambda: 'running_lora_adapters=""' in requests.get(server.url + "/metrics", timeout=10).text, 20)


# Evaluation groundwork: echo with prompt log-probabilities, as lm-evaluation-harness's
# local-completions model sends it (max_tokens 0, logprobs 1, text or token-id prompts).
def test_echo_prompt_logprobs(server):
    import concurrent.futures
    prompt = "The capital of France is Paris"
    body = {"model": BASE, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0}
    r = requests.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == prompt and "".join(lp["tokens"]) == prompt
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp["token_logprobs"][1:])
    assert all(len(t) == 1 for t in lp["top_logprobs"][1:]) and lp["text_offset"][0] == 0
    # Bitwise the same while other requests share the batch.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(requests.post, server.url + "/v1/completions",
                             json={"model": m, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}, timeout=120)
                 for m in (BASE, "fr", BASE)]
        again = pool.submit(requests.post, server.url + "/v1/completions", json=body, timeout=120).result()
        for f in noise:
            assert f.result().status_code == 200
    assert again.json()["choices"][0]["logprobs"] == lp
    # Token ids in, and a completion after the echoed prompt.
    ids = requests.post(server.url + "/v1/completions", json={**body, "prompt": [504, 3575, 282, 4649], "max_tokens": 3}, timeout=60).json()
    t = ids["choices"][0]["logprobs"]
    assert len(t["tokens"]) == 4 + 3 and t["token_logprobs"][0] is None and t["token_logprobs"][4] is not None
    r = requests.post(server.url + "/v1/completions", json={**body, "stream": True}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"


def test_tokenize_and_detokenize(server):
    r = requests.post(server.url + "/tokenize", json={"model": BASE, "prompt": "The capital of France is Paris"}, timeout=30)
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert r.json()["count"] == len(ids) > 3 and r.json()["max_model_len"] > 0
    # The same ids the completion route uses: an echo of the text gives as many tokens.
    echo = requests.post(server.url + "/v1/completions", json={"model": BASE, "prompt": "The capital of France is Paris", "echo": True,
                                                               "logprobs": 0, "max_tokens": 0}, timeout=60).json()
    assert len(echo["choices"][0]["logprobs"]["tokens"]) == len(ids)
    r = requests.post(server.url + "/detokenize", json={"model": "fr", "tokens": ids}, timeout=30)
    assert r.status_code == 200 and r.json()["prompt"] == "The capital of France is Paris"
    chat = requests.post(server.url + "/tokenize", json={"model": BASE, "messages": [{"role": "user", "content": "hi"}]}, timeout=30).json()
    assert chat["count"] > 3
    for bad, param in [({"model": "nope", "prompt": "x"}, "model"), ({"model": BASE, "tokens": [1, -2]}, "tokens"),
                       ({"model": BASE, "tokens": [10 ** 9]}, "tokens")]:
        r = requests.post(server.url + ("/tokenize" if "prompt" in bad else "/detokenize"), json=bad, timeout=30)
        assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("args, message", [
    (["serve", "--grpc-port", "70000"], "grpc-port"),
    (["serve", "--port", "8123", "--grpc-port", "8123"], "must differ"),
    (["serve", "--list-adapter-root"], "--adapter-root"),
    (["bench", "--serving", "--protocol", "carrier-pigeon"], "--protocol"),
])
def test_new_flags_refuse_bad_values(args, message):
    """The serve and bench flags of this session fail fast with a message naming the flag."""
    r = subprocess.run([FACET, *args], capture_output=True, text=True, timeout=120, env={**os.environ, "FACET_HOME": ROOT})
    assert r.returncode != 0, r.stdout
    assert message in r.stderr, r.stderr
