#!/usr/bin/env python3
"""Starts `facet serve` on the default model with the demo adapters (fr, de), sends 32
concurrent requests spread over the base model and the adapters with the official `openai`
client, prints every answer and then the server's metrics."""
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Tests", "ServerClients"))
from conftest import BASE, ROOT, Server  # noqa: E402

from openai import OpenAI  # noqa: E402
import requests  # noqa: E402

QUESTIONS = ["What is the capital of France?", "What is the capital of Germany?", "What is the capital of Italy?",
             "Name a primary color."]
MODELS = [BASE, "fr", "de"]


def main():
    server = Server(extra=["--lora", f"de={ROOT}/adapters/de"])
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        jobs = [(MODELS[i % 3], QUESTIONS[i % 4]) for i in range(32)]
        start = time.time()

        def ask(job):
            model, question = job
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=48, temperature=0)
            return model, question, r.choices[0].message.content, r.usage.completion_tokens

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(ask, jobs))
        elapsed = time.time() - start
        for i, (model, question, answer, _) in enumerate(results):
            print(f"[{i:2d}] {model:>22} | {question} -> {answer}")
        tokens = sum(r[3] for r in results)
        print(f"\n32 concurrent requests over {len(MODELS)} models: {tokens} tokens in {elapsed:.1f} s "
              f"({tokens / elapsed:.1f} tokens/s aggregate)\n")
        metrics = requests.get(server.url + "/metrics").text
        print("\n".join(l for l in metrics.splitlines() if l.startswith("facet_") and "_bucket" not in l))
        assert all(r[2] for r in results), "an answer was empty"
    finally:
        server.stop()


if __name__ == "__main__":
    main()
