"""facet serve through Triton's own gRPC client (tritonclient.grpc): KServe v2's
inference.GRPCInferenceService with TensorRT-LLM's models, decoupled streaming and
per-request LoRA tensors (made by `facet lora convert` and by the test's own NumPy code)."""
import os
import queue
import subprocess
import tempfile
import time
from functools import partial

import numpy as np
import pytest
import requests

from conftest import BASE, FACET, ROOT
from trt_lora import convert

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

PROMPT = "The capital of France is"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def triton(server):
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}") as c:
        yield c


def tensor(name, array, datatype):
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def text_inputs(text, max_tokens, *extra):
    return [tensor("text_input", np.array([[text.encode()]], dtype=object), "BYTES"),
            tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"), *extra]


def id_inputs(ids, max_tokens, *extra):
    ids = np.array([ids], dtype=np.int32)
    return [tensor("input_ids", ids, "INT32"), tensor("input_lengths", np.array([[ids.shape[1]]], dtype=np.int32), "INT32"),
            tensor("request_output_len", np.array([[max_tokens]], dtype=np.int32), "INT32"), *extra]


def text_of(result):
    v = result.as_numpy("text_output").reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else v


def completion(server, model, prompt, max_tokens):
    r = requests.post(server.url + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                            "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def streamed(triton, model, requests_):
    """Sends (inputs, request_id) pairs on one stream; returns {request_id: [results or errors]}."""
    q = queue.Queue()
    triton.start_stream(callback=lambda result, error: q.put((result, error)))
    for inputs, rid in requests_:
        triton.async_stream_infer(model, inputs, request_id=rid, enable_empty_final_response=True)
    done, out = set(), {}
    deadline = time.time() + 120
    while len(done) < len(requests_) and time.time() < deadline:
        result, error = q.get(timeout=120)
        if error is not None:
            out.setdefault("errors", []).append(str(error))
            done.add("error-" + str(len(out["errors"])))
            continue
        response = result.get_response()
        out.setdefault(response.id, []).append(result)
        if response.parameters["triton_final_response"].bool_param:
            done.add(response.id)
    triton.stop_stream()
    return out


def test_health_metadata_and_config(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tensorrt_llm") and triton.is_model_ready("ensemble")
    meta = triton.get_model_metadata("tensorrt_llm", as_json=True)
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types["lora_task_id"] == "UINT64" and types["lora_weights"] == "FP16" and types["input_ids"] == "INT32"
    config = triton.get_model_config("ensemble", as_json=True)["config"]
    assert "text_input" in {i["name"] for i in config["input"]}
    assert triton.get_server_metadata(as_json=True)["name"] == "facet"
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("nope")
    with pytest.raises(InferenceServerException) as e:
        triton.is_model_ready("nope")
    assert "NOT_FOUND" in str(e.value.status())


def test_unary_equals_http_and_openai(triton, server):
    text = text_of(triton.infer("ensemble", text_inputs(PROMPT, 12)))
    assert text == completion(server, BASE, PROMPT, 12)
    ids = [1, 504, 3575, 282, 4649, 314]
    out = triton.infer("tensorrt_llm", id_inputs(ids, 6))
    got = out.as_numpy("output_ids")
    assert got.shape[:2] == (1, 1) and list(got[0, 0, :len(ids)]) == ids
    assert int(out.as_numpy("sequence_length").reshape(-1)[0]) == got.shape[2]
    http = requests.post(server.url + "/v2/models/tensorrt_llm/infer", json={"inputs": [
        {"name": "input_ids", "datatype": "INT32", "shape": [1, len(ids)], "data": ids},
        {"name": "request_output_len", "datatype": "INT32", "shape": [1, 1], "data": [6]}]}, timeout=120).json()
    assert http["outputs"][0]["data"] == [int(v) for v in got[0, 0]]


def test_streaming_one_response_per_token(triton):
    """tensorrt_llm with streaming: one response per token holding only the new token (as
    TensorRT-LLM's decoupled model), then an empty final response when asked for."""
    ids = [1, 504, 3575, 282, 4649, 314]
    whole = [int(v) for v in triton.infer("tensorrt_llm", id_inputs(ids, 8)).as_numpy("output_ids")[0, 0, len(ids):]]
    flag = tensor("streaming", np.array([[True]]), "BOOL")
    out = streamed(triton, "tensorrt_llm", [(id_inputs(ids, 8, flag), "s1")])
    results = out["s1"]
    tokens = []
    for r in results[:-1]:
        o = r.as_numpy("output_ids")
        assert o.shape == (1, 1, 1) and int(r.as_numpy("sequence_length").reshape(-1)[0]) == 1
        tokens.append(int(o[0, 0, 0]))
    assert tokens == whole and len(tokens) == 8
    assert results[-1].as_numpy("output_ids") is None       # the empty final response
    # The ensemble streams text pieces that add up to the unary text.
    text = text_of(triton.infer("ensemble", text_inputs(PROMPT, 10)))
    out = streamed(triton, "ensemble", [(text_inputs(PROMPT, 10, tensor("stream", np.array([[True]]), "BOOL")), "e1")])
    pieces = [text_of(r) for r in out["e1"][:-1]]
    assert len(pieces) > 1 and "".join(pieces) == text


def test_one_stream_many_requests_and_errors_in_band(triton):
    """Several requests on one stream run concurrently; a bad one gets an error on the stream
    and the others still finish."""
    ids = [1, 504, 3575, 282, 4649, 314]
    out = streamed(triton, "tensorrt_llm", [
        (id_inputs(ids, 5), "a"),
        (id_inputs(ids, 5, tensor("lora_task_id", np.array([[424242]], dtype=np.uint64), "UINT64")), "bad"),
        (id_inputs(ids, 7), "b"),
    ])
    assert len(out["a"]) == 1 and out["a"][0].as_numpy("output_ids").shape[2] == len(ids) + 5
    assert len(out["b"]) == 1 and out["b"][0].as_numpy("output_ids").shape[2] == len(ids) + 7
    assert len(out["errors"]) == 1 and "not found in cache" in out["errors"][0]


@pytest.mark.parametrize("source", ["facet", "numpy"])
def test_lora_weights_then_task_id(triton, server, source):
    """The first request of a task carries lora_weights + lora_config, later ones the id
    alone; both conversions give the adapter that /v1 serves as 'fr'."""
    if source == "facet":
        out = tempfile.mkdtemp(prefix="facet-trt-")
        r = subprocess.run([FACET, "lora", "convert", os.path.join(ROOT, "adapters", "fr"), out, "--storage_type", "float16"],
                           capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT})
        assert r.returncode == 0, r.stderr
        weights, config = np.load(os.path.join(out, "model.lora_weights.npy")), np.load(os.path.join(out, "model.lora_config.npy"))
        task = 31
    else:
        weights, config = convert(os.path.join(ROOT, "adapters", "fr"))
        task = 32
    tid = tensor("lora_task_id", np.array([[task]], dtype=np.uint64), "UINT64")
    first = text_of(triton.infer("ensemble", text_inputs(CHAT, 12, tid, tensor("lora_weights", weights.astype(np.float16), "FP16"),
                                                         tensor("lora_config", config.astype(np.int32), "INT32"))))
    again = text_of(triton.infer("ensemble", text_inputs(CHAT, 12, tid)))
    base = text_of(triton.infer("ensemble", text_inputs(CHAT, 12)))
    assert first == again and first != base, (first, again, base)
    # The adapter in fp16 rows is the PEFT adapter rounded to fp16; the served 'fr' (from
    # the PEFT files) answers in French too.
    assert "capitale" in first.lower(), first


def test_start_adapters_are_task_ids(triton, server):
    """--lora fr=... is the first adapter served from the start: lora_task_id 0."""
    tid = tensor("lora_task_id", np.array([[0]], dtype=np.uint64), "UINT64")
    text = text_of(triton.infer("ensemble", text_inputs(CHAT, 12, tid)))
    assert text == completion(server, "fr", CHAT, 12)


def test_errors_are_grpc_statuses(triton, server):
    with pytest.raises(InferenceServerException, match="not found in cache") as e:
        triton.infer("ensemble", text_inputs(PROMPT, 4, tensor("lora_task_id", np.array([[98765]], dtype=np.uint64), "UINT64")))
    assert "INVALID_ARGUMENT" in str(e.value.status())
    with pytest.raises(InferenceServerException, match="bogus"):
        triton.infer("ensemble", text_inputs(PROMPT, 4, tensor("bogus", np.array([[1]], dtype=np.int32), "INT32")))
    with pytest.raises(InferenceServerException, match="beam_width"):
        triton.infer("ensemble", text_inputs(PROMPT, 4, tensor("beam_width", np.array([[2]], dtype=np.int32), "INT32")))
    with pytest.raises(InferenceServerException, match="ModelStreamInfer"):
        triton.infer("tensorrt_llm", id_inputs([1, 2, 3], 4, tensor("streaming", np.array([[True]]), "BOOL")))
    # A lora_config row naming a layer the base does not have is refused by row.
    weights, config = convert(os.path.join(ROOT, "adapters", "fr"))
    config[0, 0, 1] = 999
    with pytest.raises(InferenceServerException, match="999"):
        triton.infer("ensemble", text_inputs(PROMPT, 4, tensor("lora_task_id", np.array([[33]], dtype=np.uint64), "UINT64"),
                                             tensor("lora_weights", weights, "FP16"), tensor("lora_config", config, "INT32")))
    # A wrong raw size is an error, not a crash.
    bad = grpcclient.InferInput("input_ids", [1, 4], "INT32")
    bad.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.int32))
    bad._raw_content = b"\x01\x00"
    with pytest.raises(InferenceServerException):
        triton.infer("tensorrt_llm", [bad, tensor("request_output_len", np.array([[2]], dtype=np.int32), "INT32")])
    assert triton.is_server_live()
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert "facet_lora_cache_misses_total" in metrics and "facet_lora_cache_hits_total" in metrics


def test_cancelled_stream_frees_the_request(triton, server):
    ids = [1, 504, 3575, 282, 4649, 314]
    q = queue.Queue()
    c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer("tensorrt_llm", id_inputs(ids, 400, tensor("streaming", np.array([[True]]), "BOOL")), request_id="long")
    q.get(timeout=60)                                # generating
    c.stop_stream(cancel_requests=True)
    c.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        m = requests.get(server.url + "/metrics", timeout=10).text
        running = [l for l in m.splitlines() if l.startswith("facet_requests_running") or l.startswith("vllm:num_requests_running")]
        if running and all(float(l.split()[-1]) == 0 for l in running):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the cancelled request is still running: " + "\n".join(running))


def test_weights_without_task_id(triton, server):
    """TensorRT-LLM's first LoRA clients sent lora_weights + lora_config with every request
    and no task id: the adapter is cached by content, so the second request reuses it."""
    weights, config = convert(os.path.join(ROOT, "adapters", "fr"))
    extra = (tensor("lora_weights", weights, "FP16"), tensor("lora_config", config, "INT32"))
    first = text_of(triton.infer("ensemble", text_inputs(CHAT, 12, *extra)))
    models = {m["id"] for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"]}
    named = [m for m in models if m.startswith("lora-weights-")]
    assert len(named) == 1
    again = text_of(triton.infer("ensemble", text_inputs(CHAT, 12, *extra)))
    assert first == again == completion(server, named[0], CHAT, 12)
    assert len([m for m in (m["id"] for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"])
                if m.startswith("lora-weights-")]) == 1
    with pytest.raises(InferenceServerException, match="together"):
        triton.infer("ensemble", text_inputs(CHAT, 2, extra[0]))


def test_inference_statistics(triton, server):
    """Triton's statistics extension, as perf_analyzer reads it before and after a run."""
    before = triton.get_inference_statistics("ensemble", as_json=True)["model_stats"][0]
    triton.infer("ensemble", text_inputs(PROMPT, 2))
    after = triton.get_inference_statistics("ensemble", as_json=True)["model_stats"][0]
    ok = lambda s: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))  # noqa: E731
    assert ok(after) == ok(before) + 1
    assert int(after["inference_stats"]["success"]["ns"]) > 0
    every = triton.get_inference_statistics(as_json=True)["model_stats"]
    assert {m["name"] for m in every} == {"ensemble", "tensorrt_llm"}
    import tritonclient.http as httpclient
    http = httpclient.InferenceServerClient(url=server.url.replace("http://", ""))
    stats = http.get_inference_statistics("ensemble")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= ok(after)
