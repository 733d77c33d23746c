#!/usr/bin/env python3
"""lm-evaluation-harness, unchanged, against `facet serve`: the repo's task set (eval/tasks:
multiple choice by log-likelihood and greedy generation, in French and German, local JSON
data) for the base model and each demo adapter, through lm-eval's `local-completions` model
(echo + prompt logprobs for the log-likelihoods, token-id prompts tokenized with the
model's Hugging Face tokenizer). Prints a table; `--readme` writes it into README.md.

    python3 scripts/eval_adapters.py [--limit N] [--readme]
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "ServerClients"))
from conftest import BASE, ROOT, Server  # noqa: E402

TASKS = [("facet_capitals_fr_mc", "acc", "fr MC acc"), ("facet_capitals_fr_gen", "correct", "fr gen correct"),
         ("facet_capitals_fr_gen", "in_language", "fr gen in French"), ("facet_capitals_de_mc", "acc", "de MC acc"),
         ("facet_capitals_de_gen", "correct", "de gen correct"), ("facet_capitals_de_gen", "in_language", "de gen in German")]
TOKENIZER = os.path.join(ROOT, "Tests", "Fixtures", "smollm2", "hf-tokenizer")


def evaluate(server, model, limit):
    out = tempfile.mkdtemp(prefix="facet-lm-eval-")
    args = ["lm_eval", "--model", "local-completions", "--model_args",
            f"model={model},base_url={server.url}/v1/completions,tokenizer={TOKENIZER},tokenized_requests=True,num_concurrent=4,max_retries=1",
            "--tasks", "facet_demo", "--include_path", os.path.join(ROOT, "eval", "tasks"), "--output_path", out]
    if limit:
        args += ["--limit", str(limit)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"lm_eval failed for {model}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    files = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
    if not files:
        sys.exit(f"lm_eval wrote no results for {model} in {out}")
    results = json.load(open(files[0]))["results"]
    return {label: results[task][f"{metric},none"] for task, metric, label in TASKS}, \
        {task: results[task].get("samples", None) for task, _, _ in TASKS}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, help="examples per task (default: all 16)")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = p.parse_args()
    server = Server(extra=["--lora", f"de={ROOT}/adapters/de", "--log-level", "warning"])
    try:
        rows = {model: evaluate(server, model, args.limit)[0] for model in (BASE, "fr", "de")}
    finally:
        server.stop()
    n = args.limit or 16
    lines = [f"| model | {' | '.join(label for _, _, label in TASKS)} |", "|---" * (len(TASKS) + 1) + "|"]
    for model, values in rows.items():
        name = f"{model} (base)" if model == BASE else model
        lines.append(f"| {name} | " + " | ".join(f"{values[label]:.2f}" for _, _, label in TASKS) + " |")
    table = "\n".join(lines)
    print(f"lm-evaluation-harness (local-completions), {n} questions per task\n\n{table}")
    for model, values in rows.items():
        for label, v in values.items():
            if not (0 <= v <= 1):
                sys.exit(f"{model} {label}: {v} is not a fraction")
    if args.readme:
        path = os.path.join(ROOT, "README.md")
        text = open(path).read()
        block = f"<!-- lm-eval table: scripts/eval_adapters.py --readme -->\n{table}\n<!-- end lm-eval table -->"
        new, count = re.subn(r"<!-- lm-eval table: .*? -->\n.*?<!-- end lm-eval table -->", lambda _: block, text, flags=re.S)
        if count != 1:
            sys.exit("README.md has no lm-eval table markers")
        open(path, "w").write(new)


if __name__ == "__main__":
    main()
