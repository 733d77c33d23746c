#!/usr/bin/env python3
"""Adapter affinity against round robin: 2 replicas behind HAProxy, 32 adapters under one
--adapter-root, a byte budget that holds 16 adapters per replica, the same seeded stream of
requests (uniform over the adapters) through each balancing. Reports, from each replica's
/metrics, adapter loads from disk (first use + reloads after eviction), cache hits,
evictions, the hit rate, and throughput (this 2-core machine is CPU-bound, so the load
counts are the point, not tokens/s).

    python3 scripts/bench_affinity.py [--requests 320] [--adapters 32] [--json docs/bench-affinity.json]
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time

import requests

from serve_cluster import ROOT, Cluster


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 60000 and all(socket.socket().connect_ex(("127.0.0.1", port + k)) != 0 for k in range(3)):
            return port


def counters(url):
    text = requests.get(url + "/metrics", timeout=10).text
    def value(name):
        m = re.search(rf"^{name} (\S+)$", text, flags=re.M)
        return float(m.group(1)) if m else 0.0
    return {k: value(k) for k in ("facet_lora_first_use_loads_total", "facet_lora_cache_misses_total",
                                  "facet_lora_cache_hits_total", "facet_lora_cache_evictions_total")}


def run(balance, root, args, budget):
    cluster = Cluster(2, free_port(), root, balance=balance,
                      serve_args=["--log-level", "warning", "--max-lora-memory", str(budget), "--max-batch-size", "32"])
    try:
        rng = random.Random(args.seed)
        jobs = [f"a{rng.randrange(args.adapters)}" for _ in range(args.requests)]

        def ask(model):
            r = requests.post(cluster.url + "/v1/completions", json={"model": model, "prompt": "Bonjour", "max_tokens": args.max_tokens,
                                                                     "temperature": 0, "ignore_eos": True}, timeout=600)
            return r.status_code, (r.json().get("usage", {}).get("completion_tokens", 0) if r.status_code == 200 else 0)

        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(ask, jobs))
        seconds = time.time() - start
        per = [counters(url) for url, _ in cluster.replicas]
    finally:
        cluster.stop()
    total = {k: sum(p[k] for p in per) for k in per[0]}
    loads = total["facet_lora_first_use_loads_total"] + total["facet_lora_cache_misses_total"]
    ok = sum(1 for code, _ in results if code == 200)
    return {"balance": balance, "requests": len(jobs), "ok": ok, "seconds": round(seconds, 2),
            "tokens_per_second": round(sum(t for _, t in results) / seconds, 1),
            "adapter_loads": int(loads), "first_use_loads": int(total["facet_lora_first_use_loads_total"]),
            "reloads": int(total["facet_lora_cache_misses_total"]), "evictions": int(total["facet_lora_cache_evictions_total"]),
            "hit_rate": round(1 - loads / len(jobs), 3),
            "per_replica_loads": [int(p["facet_lora_first_use_loads_total"] + p["facet_lora_cache_misses_total"]) for p in per]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--adapters", type=int, default=32)
    p.add_argument("--per-replica", type=int, default=16, help="adapters the byte budget holds per replica")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="facet-affinity-")
    src = os.path.join(ROOT, "adapters", "fr")
    for i in range(args.adapters):
        shutil.copytree(src, os.path.join(root, f"a{i}"))
    # fr's factors in memory: q, k, v at rank 8 over 30 layers, f32 = 2,580,480 bytes; the
    # budget holds `per_replica` of them and not one more.
    one = 30 * 8 * (576 + 576 + 576 + 192 + 576 + 192) * 4
    budget = int(one * (args.per_replica + 0.5))
    rows = [run(balance, root, args, budget) for balance in ("hash", "roundrobin")]
    print(f"2 replicas, {args.adapters} adapters, budget {budget} bytes (~{args.per_replica} adapters per replica), "
          f"{args.requests} requests uniform over the adapters, concurrency {args.concurrency}, {args.max_tokens} tokens each\n")
    print("| balance | adapter loads (first use + reloads) | evictions | hit rate | loads per replica | tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['balance']} | {r['adapter_loads']} ({r['first_use_loads']} + {r['reloads']}) | {r['evictions']} | "
              f"{r['hit_rate']:.1%} | {r['per_replica_loads']} | {r['tokens_per_second']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"budget_bytes": budget, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
