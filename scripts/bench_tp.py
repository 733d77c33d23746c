#!/usr/bin/env python3
"""Tensor parallelism against one process on the same cores: `facet bench` as N ranks of
1 thread (mpirun -n N ... --tp_size N) and as one process of N threads, in turn for
--rounds rounds; prints tokens/s of both and the per-round ratios (tp / one process).

    python3 scripts/bench_tp.py --ranks 2 --model .cache/models/synthetic-8h
    python3 scripts/bench_tp.py --ranks 3                 # the embedded SmolLM2 (9/3 heads)
    python3 scripts/bench_tp.py --ranks 2 --model ... --netns   # ranks on 3 netns hosts, TCP only

The synthetic model (scripts/make_synthetic_model.py) has 8/4 heads, so 2 and 4 ranks fit.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FACET = os.path.join(ROOT, ".build", "release", "facet")


def bench(cmd, env):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        p = subprocess.run([*cmd, "--json", out.name], env=env, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
        reduce_lines = [l.strip() for l in p.stdout.splitlines() if "all-reduce:" in l]
        report = json.load(open(out.name))
        return {r["name"]: r["tokensPerSecond"] for r in report["results"] if r.get("tokensPerSecond")}, reduce_lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--netns", action="store_true", help="ranks in network namespaces joined over TCP (scripts/netns-hosts)")
    ap.add_argument("bench_args", nargs="*", default=[])
    a = ap.parse_args()
    args = ["bench", "--compute", "fp32", "--batch-sizes", "1", "8", "32", "--prompt-lengths", "128", "512",
            "--adapter-counts", "1", "--adapter-precisions", "bf16", "--rounds", "1", "--accuracy-prompts", "0", *a.bench_args]
    if a.model:
        args += ["--model", a.model]
    env = {**os.environ, "FACET_HOME": ROOT, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    mpi = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(a.ranks)]
    if a.netns:
        subprocess.run([f"{ROOT}/scripts/netns-hosts", "up", str(a.ranks)], check=True)
        hosts = ",".join(f"10.77.0.{k + 1}" for k in range(a.ranks))
        mpi += ["--host", hosts, "--mca", "plm_rsh_agent", f"{ROOT}/scripts/netns-rsh", "--mca", "btl", "tcp,self",
                "--mca", "btl_tcp_if_include", "10.77.0.0/24", "--mca", "oob_tcp_if_include", "10.77.0.0/24"]
    one_runs, tp_runs, reduces = [], [], []
    for r in range(a.rounds):
        one, _ = bench([FACET, *args], {**env, "FACET_THREADS": str(a.ranks)})
        tp, lines = bench([*mpi, FACET, *args, "--tp_size", str(a.ranks)], {**env, "FACET_THREADS": "1"})
        one_runs.append(one)
        tp_runs.append(tp)
        reduces = lines
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    where = "network-namespace hosts over TCP" if a.netns else "one host (shared-memory transport)"
    print(f"tensor parallel {a.ranks} ranks x 1 thread vs one process x {a.ranks} threads, {where}; model {a.model or 'SmolLM2-135M-Instruct Q4_1'}")
    print(f"{'measurement':44} {'one proc':>10} {'tp':>10}   ratio (per round)")
    for name in one_runs[0]:
        if name not in tp_runs[0]:
            continue
        ratios = [t[name] / o[name] for o, t in zip(one_runs, tp_runs)]
        print(f"{name:44} {statistics.median(o[name] for o in one_runs):10.1f} {statistics.median(t[name] for t in tp_runs):10.1f}   "
              f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")
    print("all-reduce (last tp round):")
    for line in reduces:
        print("  " + line)


if __name__ == "__main__":
    main()
