#!/usr/bin/env python3
"""Soak test of `facet serve` on loopback: a bounded number of requests over the base model
and the demo adapters, streaming and not, with cancellations at random points (clean closes
and connection resets), adapter loads and unloads in between, and hostile bodies mixed in.

Afterwards it checks that every request got a complete answer or a clean error, that
in-flight requests, KV blocks and adapter pins return to idle, that the server's RSS stayed
flat, and that fixed-seed outputs under load equal those of a quiet server.

    scripts/soak.py [--requests N] [--concurrency C] [--seed S] [--json OUT]

Bounded in count and time (it stops by itself); only 127.0.0.1 is contacted.
"""
import argparse
import concurrent.futures
import json
import os
import random
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "ServerClients"))
from conftest import BASE, ROOT, Server  # noqa: E402

import requests  # noqa: E402

PROMPTS = ["What is the capital of France?", "Name a primary color.", "Write a haiku about the sea.",
           "What is 2 + 2?", "Tell me a long story about a dragon."]
FIXED = [(model, prompt, 1000 + i) for i, (model, prompt) in
         enumerate([(m, p) for m in (BASE, "fr", "de") for p in PROMPTS[:3]])]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(url, name):
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def fixed_output(url, model, prompt, seed):
    r = requests.post(url + "/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0.8,
        "seed": seed})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def raw_request(port, body, path="/v1/chat/completions"):
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    payload = json.dumps(body).encode() if not isinstance(body, bytes) else body
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                 + payload)
    return sock


def one(url, port, rng, adapters_lock, loaded):
    """One random request; returns the outcome's kind ('ok', 'error', 'cancelled', 'reset')."""
    kind = rng.random()
    with adapters_lock:
        models = [BASE, "fr", "de"] + sorted(loaded)
    model = rng.choice(models)
    body = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.choice([1, 8, 32, 96]), "temperature": rng.choice([0, 0.7, 1.0])}
    if kind < 0.05:
        # Hostile: a mutated body must get a clean 4xx.
        raw = json.dumps(body)
        cut = rng.randrange(len(raw))
        r = requests.post(url + "/v1/chat/completions", data=raw[:cut] + rng.choice(["", "\x00", "}", '"', "9" * 40]),
                          headers={"content-type": "application/json"}, timeout=60)
        if r.status_code == 200:   # the cut can leave valid JSON: then it is an ordinary request
            assert r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text[:200]
            return "ok"
        assert 400 <= r.status_code < 500 and "error" in r.json(), (r.status_code, r.text[:200])
        return "error"
    if kind < 0.20:
        # Cancelled mid-stream: a reset or a clean close after a few bytes.
        sock = raw_request(port, {**body, "stream": True, "max_tokens": 200})
        if rng.random() < 0.5:
            sock.recv(rng.choice([1, 64, 1024]))
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return "reset"
        sock.close()
        return "cancelled"
    if kind < 0.55:
        r = requests.post(url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=300)
        if r.status_code != 200:
            assert r.status_code in (404, 429, 503) and "error" in r.json(), (r.status_code, r.text[:200])
            return "error"
        # SSE lines end at CR or LF only: split bytes (str.splitlines would also split at
        # U+2028 and friends inside a generated text).
        events = [line[6:].decode() for line in r.iter_lines() if line and line.startswith(b"data: ")]
        assert events and events[-1] == "[DONE]", events[-3:]
        finishes = [json.loads(e)["choices"][0].get("finish_reason") for e in events[:-1] if json.loads(e).get("choices")]
        errors = [e for e in events[:-1] if "error" in json.loads(e)]
        assert errors or finishes[-1] in ("stop", "length"), events[-3:]
        return "error" if errors else "ok"
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=300)
    if r.status_code != 200:
        assert r.status_code in (404, 429, 503) and "error" in r.json(), (r.status_code, r.text[:200])
        return "error"
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["message"]["content"], str)
    return "ok"


def adapter_churn(url, rng, adapters_lock, loaded, stop):
    """Loads and unloads copies of the demo adapters while traffic runs."""
    n = 0
    while not stop.is_set():
        name = f"churn{n % 3}"
        try:
            if name in loaded:
                r = requests.post(url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
                assert r.status_code in (200, 404), r.text
                with adapters_lock:
                    loaded.discard(name)
            else:
                r = requests.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": rng.choice(["fr", "de"])},
                                  timeout=120)
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    with adapters_lock:
                        loaded.add(name)
        except requests.ConnectionError:
            return  # the server is gone: the main thread reports why
        n += 1
        stop.wait(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--time-limit", type=float, default=3600, help="stop sending after this many seconds")
    args = ap.parse_args()

    server = Server(extra=["--lora", f"de={ROOT}/adapters/de", "--max-lora-memory", "40MB", "--max-pending", "64"])
    try:
        url, port, pid = server.url, server.port, server.proc.pid
        quiet = {f: fixed_output(url, *f) for f in FIXED}
        # Warm up, then take the RSS baseline.
        for i in range(20):
            one(url, port, random.Random(i), threading.Lock(), set())
        rss_start = rss_kib(pid)
        counts = {}
        rng = random.Random(args.seed)
        lock, loaded, stop = threading.Lock(), set(), threading.Event()
        churn = threading.Thread(target=adapter_churn, args=(url, random.Random(args.seed + 1), lock, loaded, stop))
        churn.start()
        started = time.time()
        under_load = {}
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            seeds = [rng.randrange(1 << 30) for _ in range(args.requests)]
            futures = [pool.submit(one, url, port, random.Random(s), lock, loaded) for s in seeds]
            # The fixed-seed requests again, in the middle of the traffic.
            fixed = {f: pool.submit(fixed_output, url, *f) for f in FIXED}
            for f in concurrent.futures.as_completed(futures, timeout=args.time_limit):
                kind = f.result()
                counts[kind] = counts.get(kind, 0) + 1
            under_load = {f: fut.result() for f, fut in fixed.items()}
        stop.set()
        churn.join()
        elapsed = time.time() - started
        # Back to idle: nothing running or waiting, no KV blocks held.
        deadline = time.time() + 30
        while time.time() < deadline:
            if metric(url, "facet_requests_running") == 0 and metric(url, "facet_requests_waiting") == 0 \
                    and metric(url, "facet_kv_cache_blocks_used") == 0:
                break
            time.sleep(0.2)
        idle = {name: metric(url, name) for name in ["facet_requests_running", "facet_requests_waiting", "facet_kv_cache_blocks_used"]}
        # Every adapter is unpinned: a load that needs all of the budget evicts them all.
        for name in sorted(loaded):
            requests.post(url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
        # The server still serves, and after the soak the fixed seeds give the quiet outputs.
        after = {f: fixed_output(url, *f) for f in FIXED}
        rss_end = rss_kib(pid)
        summary = {
            "requests": args.requests, "concurrency": args.concurrency, "seconds": round(elapsed, 1), "outcomes": counts,
            "idle_after": idle, "rss_kib_start": rss_start, "rss_kib_end": rss_end,
            "rss_growth": round(rss_end / max(rss_start, 1), 3),
            "fixed_seed_equal_under_load": sum(under_load[f] == quiet[f] for f in FIXED),
            "fixed_seed_equal_after": sum(after[f] == quiet[f] for f in FIXED), "fixed_seed_total": len(FIXED),
        }
        print(json.dumps(summary, indent=2))
        if args.json:
            json.dump(summary, open(args.json, "w"), indent=2)
        assert sum(counts.values()) == args.requests, counts
        assert all(v == 0 for v in idle.values()), idle
        assert summary["fixed_seed_equal_under_load"] == len(FIXED) and summary["fixed_seed_equal_after"] == len(FIXED), summary
        assert summary["rss_growth"] < 1.25, summary
        print("soak: passed")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
