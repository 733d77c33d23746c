"""The hostile sweep of the security and reliability issue: one authentication policy on every
protocol (HTTP and gRPC, through tritonclient), every number of every request field at the
edges of every datatype (KServe over HTTP JSON and gRPC binary, OpenAI and KServe generate
JSON), prompts far beyond the context, and adapter files rewritten while the server loads,
serves and unloads them. Each case must get an answer (a result, or a 4xx / gRPC status
naming the problem) and the server must stay up with its memory bounded."""
import json
import os
import random
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import BASE, ROOT, Server

KEY = "sweep-" + "k3y" * 8


def rss_mb(server):
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def alive(server):
    assert server.proc.poll() is None, "the server died: " + open(server.log.name).read()[-3000:]
    assert requests.get(server.url + "/health", timeout=30).status_code == 200


# --- One authentication policy -------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed():
    key_file = os.path.join(tempfile.mkdtemp(prefix="facet-key-"), "key")
    with open(key_file, "w") as f:
        f.write(KEY + "\n")
    s = Server(extra=["--api-key-file", key_file])
    yield s
    s.stop()


def test_the_key_stays_out_of_the_process_list(keyed):
    cmdline = open(f"/proc/{keyed.proc.pid}/cmdline", "rb").read().decode(errors="replace")
    assert KEY not in cmdline and "--api-key-file" in cmdline


def test_http_routes_need_the_key_and_probes_do_not(keyed):
    for path in ["/health", "/v2/health/live", "/v2/health/ready"]:
        assert requests.get(keyed.url + path, timeout=10).status_code == 200, path
    good = {"Authorization": "Bearer " + KEY}
    for path in ["/v1/models", "/v2", "/v2/models/ensemble", "/v2/models/ensemble/config", "/v2/models/stats"]:
        for headers in [{}, {"Authorization": "Bearer " + KEY[:-1] + "X"}, {"Authorization": "Bearer " + KEY + "x"},
                        {"Authorization": KEY}, {"Authorization": "Bearer"}]:
            r = requests.get(keyed.url + path, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.status_code)
        assert requests.get(keyed.url + path, headers=good, timeout=10).status_code == 200, path
    body = {"model": BASE, "prompt": "Hi", "max_tokens": 1}
    assert requests.post(keyed.url + "/v1/completions", json=body, timeout=60).status_code == 401
    assert requests.post(keyed.url + "/v1/completions", json=body, headers=good, timeout=60).status_code == 200


def ensemble_inputs(module, text="Hi", max_tokens=1):
    t = module.InferInput("text_input", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    m = module.InferInput("max_tokens", [1, 1], "INT32")
    m.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    return [t, m]


def test_tritonclient_http_needs_the_key(keyed):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{keyed.port}")
    assert c.is_server_live() and c.is_server_ready()
    with pytest.raises(InferenceServerException):
        c.infer("ensemble", ensemble_inputs(httpclient))
    r = c.infer("ensemble", ensemble_inputs(httpclient), headers={"authorization": "Bearer " + KEY})
    assert r.as_numpy("text_output") is not None


def test_tritonclient_grpc_needs_the_key(keyed):
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{keyed.grpc_port}") as c:
        assert c.is_server_live() and c.is_server_ready()
        for headers in [None, {"authorization": "Bearer wrong"}, {"authorization": KEY}]:
            with pytest.raises(InferenceServerException) as e:
                c.infer("ensemble", ensemble_inputs(grpcclient), headers=headers)
            assert "UNAUTHENTICATED" in str(e.value.status()), e.value
            with pytest.raises(InferenceServerException) as e:
                c.get_model_metadata("ensemble", headers=headers)
            assert "UNAUTHENTICATED" in str(e.value.status())
        good = {"authorization": "Bearer " + KEY}
        r = c.infer("ensemble", ensemble_inputs(grpcclient), headers=good)
        assert r.as_numpy("text_output") is not None
        assert c.get_model_metadata("tensorrt_llm", headers=good).name == "tensorrt_llm"
    # gRPC requests are logged like HTTP ones: method and status.
    log = open(keyed.log.name).read()
    assert "gRPC request" in log and "UNAUTHENTICATED" in log and "ModelInfer" in log


def test_bad_key_options_are_refused():
    import subprocess
    from conftest import FACET
    empty = os.path.join(tempfile.mkdtemp(prefix="facet-key-"), "empty")
    open(empty, "w").close()
    for args in [["--api-key-file", empty], ["--api-key-file", "/nonexistent/key"], ["--api-key", "a", "--api-key-file", empty],
                 ["--api-key", "  "]]:
        out = subprocess.run([FACET, "serve", "--port", "0", *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "FACET_HOME": ROOT})
        assert out.returncode != 0 and "api-key" in out.stderr, (args, out.stderr[-500:])


# --- Every number of every field -----------------------------------------------------------

INT_TYPES = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64}
EDGES = [-(2 ** 63), -(2 ** 31) - 1, -1, 0, 2 ** 31, 2 ** 63 - 1, 2 ** 64 - 1]


def int_values(dtype):
    info = np.iinfo(dtype)
    return sorted({v for v in EDGES + [int(info.min), int(info.max)] if info.min <= v <= info.max})


def sweep_cases(url, model):
    """(field, datatype, array) for every input of the model, every datatype and edge value."""
    shapes = {"input_ids": (1, 3), "stop_words_list": (1, 2, 1), "bad_words_list": (1, 2, 1)}
    fields = [t["name"] for t in requests.get(url + f"/v2/models/{model}", timeout=10).json()["inputs"]]
    for field in fields:
        if field in ("text_input", "bad_words", "stop_words", "lora_weights", "lora_config"):
            continue   # strings, and the LoRA arrays (GeneratedInputTests sweeps those)
        shape = shapes.get(field, (1, 1))
        for name, dtype in INT_TYPES.items():
            for v in int_values(dtype):
                yield field, name, np.full(shape, v, dtype=dtype)
        for v in (False, True):
            yield field, "BOOL", np.full(shape, v, dtype=np.bool_)
        for name, dtype in (("FP32", np.float32), ("FP64", np.float64)):
            for v in (float("nan"), float("inf"), float("-inf"), 1e30, -1.0, 0.5):
                yield field, name, np.full(shape, v, dtype=dtype)


def base_inputs(module, model):
    if model == "ensemble":
        return {"text_input": ("BYTES", np.array([[b"Hi"]], dtype=object)), "max_tokens": ("INT32", np.array([[1]], dtype=np.int32))}
    return {"input_ids": ("INT32", np.array([[1, 2, 3]], dtype=np.int32)), "request_output_len": ("INT32", np.array([[1]], dtype=np.int32))}


def infer(module, client, model, fields, binary):
    inputs = []
    for name, (datatype, array) in fields.items():
        t = module.InferInput(name, list(array.shape), datatype)
        if module is httpclient:
            t.set_data_from_numpy(array, binary_data=binary)
        else:
            t.set_data_from_numpy(array)
        inputs.append(t)
    return client.infer(model, inputs, client_timeout=120) if module is grpcclient else client.infer(model, inputs, timeout=120)


@pytest.mark.parametrize("transport", ["http-json", "grpc-binary"])
@pytest.mark.parametrize("model", ["tensorrt_llm", "ensemble"])
def test_every_kserve_number_is_checked(server, model, transport):
    module = grpcclient if transport.startswith("grpc") else httpclient
    client = (grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}") if module is grpcclient
              else httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=120, connection_timeout=120))
    bad, count = [], 0
    for field, datatype, array in sweep_cases(server.url, model):
        fields = base_inputs(module, model)
        fields[field] = (datatype, array)
        count += 1
        try:
            infer(module, client, model, fields, binary=False)
        except InferenceServerException as e:
            status = str(e.status())
            # A refusal is a client error naming the input; never an internal error or a dropped connection.
            ok = ("INVALID_ARGUMENT" in status or "NOT_FOUND" in status or "RESOURCE_EXHAUSTED" in status) if module is grpcclient \
                else status.startswith("4")
            if not ok:
                bad.append((field, datatype, array.reshape(-1)[0].item(), status, e.message()[:200]))
        except Exception as e:   # connection reset, timeout: the server fell over
            bad.append((field, datatype, array.reshape(-1)[0].item(), type(e).__name__, str(e)[:200]))
            alive(server)
    assert count > 500
    assert not bad, bad[:20]
    alive(server)


RAW_VALUES = ["1e20", "-1e20", "-1", "0", "9223372036854775807", "9223372036854775808", "18446744073709551615",
              "2147483648", "-9223372036854775809", "NaN", "Infinity", "-Infinity", "1e400", "1.5", "true", "null", '"7"',
              "[]", "{}"]


def raw_post(server, path, body_text):
    return requests.post(server.url + path, data=body_text.encode(), headers={"Content-Type": "application/json"}, timeout=120)


def test_every_json_number_is_checked(server):
    openai_fields = ["max_tokens", "max_completion_tokens", "n", "best_of", "top_k", "top_p", "temperature", "min_p",
                     "repetition_penalty", "seed", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
                     "stop_token_ids", "prompt", "min_tokens", "length_penalty"]
    generate_fields = ["max_tokens", "top_k", "top_p", "temperature", "end_id", "pad_id", "random_seed", "beam_width",
                       "min_length", "repetition_penalty", "lora_task_id", "length_penalty", "presence_penalty", "return_log_probs"]
    bad, count = [], 0
    routes = [("/v1/completions", '{"model": "%s", "prompt": "Hi", "max_tokens": 1' % BASE, openai_fields),
              ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1' % BASE,
               [f for f in openai_fields if f != "prompt"]),
              ("/v2/models/ensemble/generate", '{"text_input": "Hi", "max_tokens": 1', generate_fields),
              ("/v2/models/tensorrt_llm/generate", '{"input_ids": [1, 2, 3], "request_output_len": 1',
               generate_fields + ["input_ids", "request_output_len"])]
    for path, base, fields in routes:
        for field in fields:
            for value in RAW_VALUES:
                text = value if field not in ("stop_token_ids", "prompt", "input_ids") else "[" + value + "]"
                # A later duplicate key wins in most parsers; send the field once either way.
                body = base.replace('"max_tokens": 1', '"max_tokens": 1' if field != "max_tokens" else '"max_tokens": ' + text)
                body = body.replace('"request_output_len": 1', '"request_output_len": ' + text) if field == "request_output_len" else body
                body = body.replace('"input_ids": [1, 2, 3]', '"input_ids": ' + text) if field == "input_ids" else body
                if field not in ("max_tokens", "request_output_len", "input_ids"):
                    body += ', "%s": %s' % (field, text)
                body += "}"
                count += 1
                try:
                    r = raw_post(server, path, body)
                    if r.status_code >= 500:
                        bad.append((path, field, value, r.status_code, r.text[:200]))
                except requests.RequestException as e:
                    bad.append((path, field, value, type(e).__name__))
                    alive(server)
    assert count > 1000
    assert not bad, bad[:20]
    alive(server)


# --- Prompts far beyond the context --------------------------------------------------------

def test_huge_prompts_are_refused_before_they_are_tokenized(server):
    alive(server)
    before = rss_mb(server)
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}") as c:
        for size in (64 << 20, 8 << 20):
            begin = time.time()
            with pytest.raises(InferenceServerException) as e:
                c.infer("ensemble", ensemble_inputs(grpcclient, text="a" * size), client_timeout=120)
            assert "INVALID_ARGUMENT" in str(e.value.status()) and "context length" in e.value.message(), e.value
            assert time.time() - begin < 30
    # Over HTTP, under the 4 MiB body limit: one long word, many words, a chat; and a prompt
    # whose bytes could fit but whose tokens do not (refused once the tokens pass the context).
    bodies = [("/v1/completions", {"model": BASE, "prompt": "x" * (3 << 20), "max_tokens": 1}),
              ("/v1/completions", {"model": BASE, "prompt": "hello " * 600_000, "max_tokens": 1}),
              ("/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "word " * 700_000}], "max_tokens": 1}),
              ("/v1/completions", {"model": BASE, "prompt": " hello" * 9000, "max_tokens": 1})]
    for path, body in bodies:
        begin = time.time()
        r = requests.post(server.url + path, json=body, timeout=120)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        assert time.time() - begin < 30, (path, time.time() - begin)
    alive(server)
    r = requests.post(server.url + "/v1/completions", json={"model": BASE, "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200
    # The memory the refused requests took comes back (within what allocators keep).
    time.sleep(1)
    assert rss_mb(server) < before + 400, (before, rss_mb(server))


# --- Adapter files that change under the server ----------------------------------------------

def test_adapter_files_rewritten_while_loaded_used_and_unloaded(server):
    name = "churn"
    path = os.path.join(server.adapter_root, name)
    shutil.copytree(os.path.join(ROOT, "adapters", "fr"), path)
    weights = os.path.join(path, "adapter_model.safetensors")
    good = open(weights, "rb").read()
    stop = threading.Event()

    def rewrite():
        rng = random.Random(52)
        while not stop.is_set():
            # Truncate, then write it back in pieces: readers meet every length in between.
            with open(weights, "r+b") as f:
                f.truncate(rng.randrange(0, len(good)))
            time.sleep(rng.random() * 0.01)
            with open(weights, "wb") as f:
                cut = rng.randrange(0, len(good))
                f.write(good[:cut])
                f.flush()
                time.sleep(rng.random() * 0.01)
                f.write(good[cut:])
            time.sleep(rng.random() * 0.02)

    writer = threading.Thread(target=rewrite)
    writer.start()
    outcomes = {}
    try:
        deadline = time.time() + 40
        i = 0
        while time.time() < deadline and i < 150:
            i += 1
            for method, route, body in [
                ("post", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": name}),
                ("post", "/v1/completions", {"model": name, "prompt": "Bonjour", "max_tokens": 2}),
                ("post", "/v1/unload_lora_adapter", {"lora_name": name}),
            ]:
                r = requests.post(server.url + route, json=body, timeout=120)
                outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
                assert r.status_code < 500, (route, r.status_code, r.text[:300])
    finally:
        stop.set()
        writer.join()
    alive(server)
    assert sum(outcomes.values()) >= 30, outcomes
    # With the file whole again the adapter loads and serves.
    open(weights, "wb").write(good)
    requests.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    r = requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": name}, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.post(server.url + "/v1/completions", json={"model": name, "prompt": "Bonjour", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    requests.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def test_config_contradicting_its_tensors_is_refused(server):
    path = os.path.join(server.adapter_root, "wrongtargets")
    shutil.copytree(os.path.join(ROOT, "adapters", "fr"), path)
    cfg_path = os.path.join(path, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["target_modules"] = ["nonexistent_proj"]
    json.dump(cfg, open(cfg_path, "w"))
    r = requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "wrongtargets", "lora_path": "wrongtargets"}, timeout=60)
    assert r.status_code == 400 and "nonexistent_proj" in r.text and "target_modules" in r.text, r.text
    alive(server)
