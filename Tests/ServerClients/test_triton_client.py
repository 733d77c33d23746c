"""facet serve through Triton's own HTTP client (tritonclient): the KServe v2 protocol with
TensorRT-LLM's `ensemble` and `tensorrt_llm` models and per-request LoRA tensors."""
import json
import os
import subprocess
import tempfile

import numpy as np
import pytest
import requests

from conftest import BASE, FACET, ROOT

tritonclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def triton(server):
    return tritonclient.InferenceServerClient(url=server.url.replace("http://", ""))


def text_input(text, max_tokens, extra=()):
    t = tritonclient.InferInput("text_input", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    m = tritonclient.InferInput("max_tokens", [1, 1], "INT32")
    m.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    return [t, m, *extra]


def tensor(name, array, datatype, binary=True):
    t = tritonclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def completion(server, model, prompt, max_tokens):
    r = requests.post(server.url + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                            "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_health_metadata_and_config(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("ensemble") and triton.is_model_ready("tensorrt_llm")
    meta = triton.get_model_metadata("tensorrt_llm")
    names = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert names["input_ids"] == "INT32" and names["lora_task_id"] == "UINT64" and names["lora_config"] == "INT32"
    assert {o["name"] for o in meta["outputs"]} == {"output_ids", "sequence_length"}
    config = triton.get_model_config("ensemble")
    assert "text_input" in {i["name"] for i in config["input"]}
    with pytest.raises(InferenceServerException):
        triton.get_model_metadata("nope")
    index = triton.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} == {("ensemble", "READY"), ("tensorrt_llm", "READY")}


def test_ensemble_equals_the_openai_route(triton, server):
    """Greedy (TensorRT-LLM's default top_k 0 / top_p 0): the same text as /v1/completions."""
    for binary in (True, False):
        out = tritonclient.InferRequestedOutput("text_output", binary_data=binary)
        result = triton.infer("ensemble", text_input(PROMPT, 12), outputs=[out])
        text = result.as_numpy("text_output").reshape(-1)[0]
        text = text.decode() if isinstance(text, bytes) else text
        assert text == completion(server, BASE, PROMPT, 12)


def test_tensorrt_llm_ids_in_and_out(triton):
    ids = np.array([[1, 504, 3575, 282, 4649, 314]], dtype=np.int32)
    inputs = [tensor("input_ids", ids, "INT32"), tensor("input_lengths", np.array([[ids.shape[1]]], dtype=np.int32), "INT32"),
              tensor("request_output_len", np.array([[6]], dtype=np.int32), "INT32")]
    result = triton.infer("tensorrt_llm", inputs)
    out = result.as_numpy("output_ids")
    length = result.as_numpy("sequence_length")
    assert out.shape[:2] == (1, 1) and int(length.reshape(-1)[0]) == out.shape[2]
    assert list(out[0, 0, :ids.shape[1]]) == list(ids[0])         # input included, as TensorRT-LLM's default
    excluded = triton.infer("tensorrt_llm", inputs + [tensor("exclude_input_in_output", np.array([[True]]), "BOOL")])
    assert list(excluded.as_numpy("output_ids")[0, 0]) == list(out[0, 0, ids.shape[1]:])
    # A two-token stop word (TensorRT-LLM's [1, 2, N] list: ids, then end offsets) ends the
    # output right after it.
    generated = [int(v) for v in out[0, 0, ids.shape[1]:]]
    word = generated[2:4]
    stops = np.array([[word, [2, -1]]], dtype=np.int32)
    stopped = triton.infer("tensorrt_llm", inputs + [tensor("exclude_input_in_output", np.array([[True]]), "BOOL"),
                                                     tensor("stop_words_list", stops, "INT32")])
    assert [int(v) for v in stopped.as_numpy("output_ids")[0, 0]] == generated[:4]


def test_per_request_lora_weights_then_task_id(triton, server):
    """The article's flow: the first request of task 7 carries lora_weights + lora_config
    (the .npy pair that `facet lora convert` writes, as hf_lora_convert.py does); later
    requests send only the task id; an unknown task id without weights is an error."""
    out = tempfile.mkdtemp(prefix="facet-trt-")
    r = subprocess.run([FACET, "lora", "convert", os.path.join(ROOT, "adapters", "fr"), out, "--storage_type", "float16"],
                       capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT})
    assert r.returncode == 0, r.stderr
    weights = np.load(os.path.join(out, "model.lora_weights.npy"))
    config = np.load(os.path.join(out, "model.lora_config.npy"))
    task = tensor("lora_task_id", np.array([[7]], dtype=np.uint64), "UINT64")
    chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    first = triton.infer("ensemble", text_input(chat, 16, [task, tensor("lora_weights", weights.astype(np.float16), "FP16"),
                                                          tensor("lora_config", config.astype(np.int32), "INT32")]))
    again = triton.infer("ensemble", text_input(chat, 16, [task]))
    base = triton.infer("ensemble", text_input(chat, 16))
    a, b, c = (x.as_numpy("text_output").reshape(-1)[0].decode() for x in (first, again, base))
    assert a == b and a != c and "Paris" in c, (a, b, c)
    assert "capitale" in a, a   # the French adapter, through TensorRT-LLM's arrays
    with pytest.raises(InferenceServerException, match="not found in cache"):
        triton.infer("ensemble", text_input(PROMPT, 4, [tensor("lora_task_id", np.array([[12345]], dtype=np.uint64), "UINT64")]))


def test_generate_and_generate_stream(server):
    body = {"text_input": PROMPT, "max_tokens": 10}
    r = requests.post(server.url + "/v2/models/ensemble/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    text = r.json()["text_output"]
    assert text == completion(server, BASE, PROMPT, 10)
    r = requests.post(server.url + "/v2/models/ensemble/generate_stream", json={**body, "stream": True}, stream=True, timeout=120)
    pieces = [json.loads(line[6:])["text_output"] for line in (l.decode() for l in r.iter_lines()) if line.startswith("data: ")]
    assert len(pieces) > 1 and "".join(pieces) == text


def test_errors_name_the_input(server, triton):
    r = requests.post(server.url + "/v2/models/ensemble/generate", json={"text_input": "hi", "max_tokens": 2, "bogus": 1}, timeout=60)
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    r = requests.post(server.url + "/v2/models/ensemble/generate", json={"text_input": "hi", "max_tokens": 2, "frequency_penalty": 0.5}, timeout=60)
    assert r.status_code == 400 and "frequency_penalty" in r.json()["error"]
    r = requests.post(server.url + "/v2/models/tensorrt_llm/infer", data=b"{not json", timeout=60)
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(server.url + "/v2/models/tensorrt_llm/infer", headers={"Inference-Header-Content-Length": "999"}, data=b"{}", timeout=60)
    assert r.status_code == 400
    with pytest.raises(InferenceServerException, match="beam_width"):
        triton.infer("ensemble", text_input(PROMPT, 2, [tensor("beam_width", np.array([[2]], dtype=np.int32), "INT32")]))
    assert requests.get(server.url + "/health").status_code == 200


def test_task_id_limits_and_cached_ids_keep_their_weights(triton, server):
    """lora_task_id is TensorRT-LLM's uint64, kept as a signed 64-bit value: ids up to 2^63 - 1
    work, larger ones are refused with the same message in JSON and binary form, a negative
    id in a signed tensor is refused, and other weights under an id already cached are
    refused with what to do instead (TensorRT-LLM would silently keep the cached weights)."""
    out = tempfile.mkdtemp(prefix="facet-trt-")
    r = subprocess.run([FACET, "lora", "convert", os.path.join(ROOT, "adapters", "fr"), out],
                       capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT})
    assert r.returncode == 0, r.stderr
    weights = np.load(os.path.join(out, "model.lora_weights.npy")).astype(np.float32)
    config = np.load(os.path.join(out, "model.lora_config.npy")).astype(np.int32)
    top = (1 << 63) - 1
    task = tensor("lora_task_id", np.array([[top]], dtype=np.uint64), "UINT64", binary=False)
    first = triton.infer("ensemble", text_input(PROMPT, 4, [task, tensor("lora_weights", weights, "FP32"), tensor("lora_config", config, "INT32")]))
    again = triton.infer("ensemble", text_input(PROMPT, 4, [tensor("lora_task_id", np.array([[top]], dtype=np.uint64), "UINT64")]))
    assert first.as_numpy("text_output").tolist() == again.as_numpy("text_output").tolist()
    for binary in (False, True):
        with pytest.raises(InferenceServerException, match="beyond 2\\^63"):
            triton.infer("ensemble", text_input(PROMPT, 2, [tensor("lora_task_id", np.array([[top + 2]], dtype=np.uint64), "UINT64", binary=binary)]))
    with pytest.raises(InferenceServerException, match="0 or more"):
        triton.infer("ensemble", text_input(PROMPT, 2, [tensor("lora_task_id", np.array([[-3]], dtype=np.int64), "INT64")]))
    other = weights.copy()
    other[0, 0, 0] += 0.5
    with pytest.raises(InferenceServerException, match="already cached with other weights"):
        triton.infer("ensemble", text_input(PROMPT, 2, [tensor("lora_task_id", np.array([[top]], dtype=np.uint64), "UINT64"),
                                                        tensor("lora_weights", other, "FP32"), tensor("lora_config", config, "INT32")]))
    assert requests.get(server.url + "/health").status_code == 200
