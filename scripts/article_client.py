#!/usr/bin/env python3
"""The source article's multi-LoRA client loop against `facet serve`, with Triton's own gRPC
client (tritonclient.grpc) and TensorRT-LLM's `tensorrt_llm` model.

Six concurrent requests: base / adapter A / adapter B, twice over (the demo adapters fr and
de stand in for the article's Chinese and Japanese ones). As in the article, the adapters
are first converted to TensorRT-LLM's `.npy` pair (`facet lora convert`, the counterpart of
hf_lora_convert.py); the first request of each task id carries `lora_weights` and
`lora_config`, the later ones the id alone (they are sent once the first ones are running,
so that the weights are in the cache). Each request prints `Input sequence`, `Output
sequence` and the texts, as the article's inflight_batcher_llm_client.py does.

With `--check` the answers must equal `facet run`'s for the same prompts, adapters, sampling
and seed (`--lora_dir fr de --lora_task_uids -1 0 1 -1 0 1`); the exit status says.

    python3 scripts/article_client.py --check            # starts its own server
    python3 scripts/article_client.py --url host:8001 --http http://host:8000 --lora-path fr=DIR --lora-path de=DIR
"""
import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np
import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "ServerClients"))
from conftest import BASE, FACET, ROOT, Server, facet_run  # noqa: E402

import tritonclient.grpc as grpcclient  # noqa: E402

TEXTS = {"fr": "Quelle est la capitale des États-Unis ? \nRéponse :",
         "de": "Was ist die Hauptstadt der Vereinigten Staaten? \nAntwort:"}
# The article's INPUT_TEXT / LORA_PATHS pattern: three requests per language, over base, A, B.
JOBS = [("fr", None), ("fr", "fr"), ("fr", "de"), ("de", None), ("de", "fr"), ("de", "de")]


def tensor(name, array, datatype):
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


class Request(threading.Thread):
    """One client (as each of the article's background processes): its own stream."""

    def __init__(self, index, url, ids, args, lora=None):
        super().__init__()
        self.index, self.url, self.ids, self.args, self.lora = index, url, ids, args, lora
        self.started = threading.Event()
        self.tokens, self.error = [], None

    def run(self):
        a = self.args
        inputs = [tensor("input_ids", np.array([self.ids], dtype=np.int32), "INT32"),
                  tensor("input_lengths", np.array([[len(self.ids)]], dtype=np.int32), "INT32"),
                  tensor("request_output_len", np.array([[a.request_output_len]], dtype=np.int32), "INT32"),
                  tensor("runtime_top_k", np.array([[a.top_k]], dtype=np.int32), "INT32"),
                  tensor("runtime_top_p", np.array([[a.top_p]], dtype=np.float32), "FP32"),
                  tensor("random_seed", np.array([[a.seed]], dtype=np.uint64), "UINT64"),
                  tensor("streaming", np.array([[True]]), "BOOL")]
        if self.lora is not None:
            task_id, weights, config = self.lora
            inputs.append(tensor("lora_task_id", np.array([[task_id]], dtype=np.uint64), "UINT64"))
            if weights is not None:
                inputs += [tensor("lora_weights", weights, "FP16"), tensor("lora_config", config, "INT32")]
        q = queue.Queue()
        with grpcclient.InferenceServerClient(url=self.url) as client:
            client.start_stream(callback=lambda result, error: q.put((result, error)))
            client.async_stream_infer("tensorrt_llm", inputs, request_id=str(self.index), enable_empty_final_response=True)
            while True:
                result, error = q.get(timeout=600)
                self.started.set()
                if error is not None:
                    self.error = str(error)
                    break
                response = result.get_response()
                out = result.as_numpy("output_ids")
                if out is not None:
                    self.tokens += [int(v) for v in out[0, 0]]
                if response.parameters["triton_final_response"].bool_param:
                    break
            client.stop_stream()
        self.started.set()


def convert(adapter_dir):
    out = tempfile.mkdtemp(prefix="facet-lora-npy-")
    r = subprocess.run([FACET, "lora", "convert", adapter_dir, out, "--storage_type", "float16"], capture_output=True, text=True,
                       env={**os.environ, "FACET_HOME": ROOT})
    if r.returncode != 0:
        sys.exit("facet lora convert failed: " + r.stderr)
    return out, np.load(os.path.join(out, "model.lora_weights.npy")), np.load(os.path.join(out, "model.lora_config.npy"))


def run_locally(args, adapters):
    """facet run's answers for the same six inputs, in order."""
    run_args = ["--max_output_len", str(args.request_output_len), "--top_k", str(args.top_k), "--top_p", str(args.top_p),
                "--random_seed", str(args.seed), "--lora_dir", adapters["fr"], adapters["de"], "--input_text"]
    run_args += [TEXTS[lang] for lang, _ in JOBS]
    run_args += ["--lora_task_uids"] + [str({None: -1, "fr": 0, "de": 1}[lora]) for _, lora in JOBS]
    return facet_run(*run_args)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="gRPC address of a running facet serve (default: start one)")
    p.add_argument("--http", help="its HTTP address, for /tokenize and /detokenize")
    p.add_argument("--lora-path", action="append", default=[], help="NAME=DIR of a PEFT adapter (default: the demo adapters fr, de)")
    p.add_argument("--top-k", dest="top_k", type=int, default=0)
    p.add_argument("--top-p", dest="top_p", type=float, default=0.5)
    p.add_argument("--request-output-len", dest="request_output_len", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--check", action="store_true", help="compare with facet run's answers")
    args = p.parse_args()
    adapters = {"fr": os.path.join(ROOT, "adapters", "fr"), "de": os.path.join(ROOT, "adapters", "de")}
    for spec in args.lora_path:
        name, _, path = spec.partition("=")
        adapters[name] = path
    server = None
    if args.url is None:
        server = Server()
        args.url, args.http = f"127.0.0.1:{server.grpc_port}", server.url
    try:
        converted = {name: convert(path) for name, path in adapters.items()}
        arrays = {name: c[1:] for name, c in converted.items()}
        task_ids = {"fr": 1, "de": 2}

        def tokenize(text):
            r = requests.post(args.http + "/tokenize", json={"model": BASE, "prompt": text}, timeout=60)
            r.raise_for_status()
            return r.json()["tokens"]

        def detokenize(ids):
            r = requests.post(args.http + "/detokenize", json={"model": BASE, "tokens": ids}, timeout=60)
            r.raise_for_status()
            return r.json()["prompt"]

        reqs, sent = [], set()
        for i, (lang, lora) in enumerate(JOBS):
            spec = None
            if lora is not None:
                first = lora not in sent
                sent.add(lora)
                spec = (task_ids[lora], *(arrays[lora] if first else (None, None)))
            reqs.append(Request(i, args.url, tokenize(TEXTS[lang]), args, spec))
        # The first request of each task id carries its weights; the later ones start once
        # those are running (their weights then in the cache), so all six run together.
        firsts = [r for r in reqs if r.lora is None or r.lora[1] is not None]
        for r in firsts:
            r.start()
        for r in firsts:
            r.started.wait(600)
        for r in reqs:
            if r not in firsts:
                r.start()
        for r in reqs:
            r.join()
        ok = True
        answers = []
        for r, (lang, lora) in zip(reqs, JOBS):
            print(f"Input sequence:  {r.ids}")
            if r.error:
                print(f"Received an error from server: {r.error}")
                ok = False
                answers.append(None)
                continue
            print(f"Output sequence:  {r.ids + r.tokens}")
            text = detokenize(r.tokens)
            answers.append(text)
            print(f"Input: {TEXTS[lang]!r} (adapter: {lora or 'base'}, lora_task_id: {task_ids.get(lora, '-')})")
            print(f"Output: {text!r}\n")
        if args.check:
            # facet run reads the same converted .npy pairs, so both use the same fp16 weights.
            expected = run_locally(args, {name: c[0] for name, c in converted.items()})
            for i, (got, want) in enumerate(zip(answers, expected)):
                if got != want:
                    print(f"request {i}: served {got!r} but facet run gave {want!r}")
                    ok = False
            if len(expected) != len(answers):
                print(f"facet run gave {len(expected)} answers for {len(answers)} inputs")
                ok = False
            print("equal to facet run's answers" if ok else "NOT equal to facet run's answers")
        sys.exit(0 if ok else 1)
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
