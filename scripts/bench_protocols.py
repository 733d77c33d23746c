#!/usr/bin/env python3
"""The cost of each protocol on the same server: OpenAI streaming completions, Triton's
KServe generate_stream (HTTP/SSE) and KServe ModelStreamInfer (gRPC), at 1 stream and at 32
concurrent streams, in alternating rounds (`facet bench --serving --protocol ...` against
one `facet serve --grpc-port`). Prints medians over the rounds and writes JSON.

    python3 scripts/bench_protocols.py [--rounds 3] [--json docs/bench-protocols.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "ServerClients"))
from conftest import FACET, ROOT, Server  # noqa: E402

PROTOCOLS = ["openai", "kserve-http", "kserve-grpc"]


def bench(server, protocol, streams, args):
    out = tempfile.mktemp(suffix=".json")
    cmd = [FACET, "bench", "--serving", "--url", server.url, "--grpc-port", str(server.grpc_port), "--protocol", protocol,
           "--rates", "max", "--requests", str(streams), "--max-tokens", str(args.max_tokens), "--prompt-words", str(args.prompt_words),
           "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT})
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {r.stderr}")
    result = json.load(open(out))["serving"][0]
    os.remove(out)
    if result["failed"]:
        sys.exit(f"{protocol} at {streams} streams: {result['failed']} requests failed: {result.get('firstError')}")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=64)
    p.add_argument("--json")
    args = p.parse_args()
    server = Server(extra=["--log-level", "warning"])
    try:
        samples = {(proto, n): [] for proto in PROTOCOLS for n in (1, 32)}
        for _ in range(args.rounds):
            for n in (1, 32):
                for proto in PROTOCOLS:
                    samples[(proto, n)].append(bench(server, proto, n, args))
    finally:
        server.stop()
    rows = []
    print(f"{args.rounds} rounds, {args.prompt_words}-word prompts, {args.max_tokens} tokens per request (end token ignored); medians\n")
    print("| protocol | streams | out tok/s | TTFT p50 ms | TPOT p50 ms | latency p50 ms | tok/s vs openai |")
    print("|---|---|---|---|---|---|---|")
    for n in (1, 32):
        base = statistics.median(r["outputTokensPerSecond"] for r in samples[("openai", n)])
        for proto in PROTOCOLS:
            s = samples[(proto, n)]
            row = {"protocol": proto, "streams": n,
                   "tokens_per_second": round(statistics.median(r["outputTokensPerSecond"] for r in s), 1),
                   "ttft_p50_ms": round(statistics.median(r["ttft"]["p50"] for r in s), 1),
                   "tpot_p50_ms": round(statistics.median(r["tpot"]["p50"] for r in s), 2),
                   "latency_p50_ms": round(statistics.median(r["latency"]["p50"] for r in s), 1)}
            row["ratio_to_openai"] = round(row["tokens_per_second"] / base, 3)
            rows.append(row)
            print(f"| {proto} | {n} | {row['tokens_per_second']} | {row['ttft_p50_ms']} | {row['tpot_p50_ms']} | "
                  f"{row['latency_p50_ms']} | {row['ratio_to_openai']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows, "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": ")}, f, indent=2)


if __name__ == "__main__":
    main()
