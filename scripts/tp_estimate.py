#!/usr/bin/env python3
"""Paper estimate of what tensor parallelism sends per generated token (decode, batch 1)
for Llama-2 7B and 70B at tp 2/4/8 over 25 Gb/s and 200 Gb/s links, with Facet's scheme:
two all-reduces of D floats per layer (after o_proj and down_proj), each an all-gather of
every rank's partial sums followed by a fixed-order local sum (deterministic on every
rank); the logits row is gathered on rank 0 (V/N floats from each other rank).

Link model: time = latency x rounds + bytes / bandwidth, with an all-gather of N ranks
taking log2(N) rounds (recursive doubling) and each rank receiving the other N-1 ranks'
D floats (a bandwidth-optimal ring all-reduce would receive 2(N-1)/N D instead: the
same at tp 2, 2x less at tp 4, 4x less at tp 8). Latency per message: 30 us (TCP over 25 Gb/s Ethernet), 3 us (200 Gb/s
InfiniBand/RoCE). Compute per token: bf16 weights / N read at 50 GB/s per rank (memory
bound), for scale."""
import math

MODELS = {"Llama-2-7B": dict(D=4096, L=32, V=32000, params=6.74e9), "Llama-2-70B": dict(D=8192, L=80, V=32000, params=69e9)}
LINKS = {"25 Gb/s TCP": (25e9 / 8, 30e-6), "200 Gb/s IB": (200e9 / 8, 3e-6)}

print(f"{'model':12} {'tp':>3} {'bytes in/token/rank':>20} {'msgs/token':>10}  " + "  ".join(f"{k:>22}" for k in LINKS) + "   compute/token (bf16 @50 GB/s)")
for name, m in MODELS.items():
    for n in (2, 4, 8):
        per_reduce = (n - 1) * m["D"] * 4           # all-gather: the other ranks' partial sums
        reduces = 2 * m["L"]
        logits = (n - 1) * math.ceil(m["V"] / n) * 4  # rank 0 gathers the vocabulary slices
        total = reduces * per_reduce + logits
        cells = []
        for bw, lat in LINKS.values():
            rounds = math.ceil(math.log2(n))
            t = reduces * (lat * rounds + per_reduce / bw) + (lat + logits / bw)
            cells.append(f"{t * 1e3:8.2f} ms/token")
        compute = m["params"] * 2 / n / 50e9
        print(f"{name:12} {n:>3} {total / 1e6:17.2f} MB {reduces + 1:>10}  " + "  ".join(f"{c:>22}" for c in cells) + f"   {compute * 1e3:8.1f} ms")
