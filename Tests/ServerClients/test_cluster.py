"""Two `facet serve` replicas behind HAProxy (scripts/serve-cluster): adapter affinity,
answers equal to one replica's, and failover when a replica dies."""
import concurrent.futures
import os
import re
import shutil
import signal
import sys
import tempfile
import time

import pytest
import requests

from conftest import BASE, ROOT, free_port

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from serve_cluster import Cluster  # noqa: E402

openai = pytest.importorskip("openai")

ADAPTERS = [f"a{i}" for i in range(8)]
PROMPTS = ["The capital of France is", "Bonjour, je m'appelle", "Die Hauptstadt von", "One, two, three,"]


def make_root():
    root = tempfile.mkdtemp(prefix="facet-cluster-adapters-")
    for i, name in enumerate(ADAPTERS):
        shutil.copytree(os.path.join(ROOT, "adapters", "fr" if i % 2 == 0 else "de"), os.path.join(root, name))
    return root


@pytest.fixture(scope="module")
def cluster():
    port = free_port()
    while any(_busy(port + k) for k in range(3)):
        port = free_port()
    c = Cluster(2, port, make_root(), serve_args=["--served-model-name", BASE, "--log-level", "warning",
                                                   "--max-batch-size", "32", "--kv-cache-memory", "256MB"])
    yield c
    c.stop()


def _busy(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ask(url, model, prompt, seed):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0.8, seed=seed)
    return r.choices[0].text


def resident(url):
    text = requests.get(url + "/metrics", timeout=10).text
    return set(re.findall(r'^facet_lora_resident\{adapter="([^"]+)"\} 1', text, flags=re.M))


def test_affinity_same_answers_and_failover(cluster, server):
    # The one-replica reference: the session's server, with the same adapters under its root.
    for name in ADAPTERS:
        dst = os.path.join(server.adapter_root, name)
        if not os.path.exists(dst):
            shutil.copytree(os.path.join(ROOT, "adapters", "fr" if ADAPTERS.index(name) % 2 == 0 else "de"), dst)
    models = [BASE] + ADAPTERS
    jobs = [(models[i % len(models)], PROMPTS[(i // len(models)) % len(PROMPTS)], 11 + i % 3) for i in range(240)]
    reference = {}

    def ref(job):
        if job not in reference:
            reference[job] = ask(server.url, *job)
        return reference[job]

    for job in sorted(set(jobs)):
        ref(job)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: ask(cluster.url, *job), jobs))
    mismatched = [(job, a, reference[job]) for job, a in zip(jobs, answers) if a != reference[job]]
    assert not mismatched, mismatched[:5]

    # Each adapter is resident on exactly one replica.
    held = [resident(url) for url, _ in cluster.replicas]
    for name in ADAPTERS:
        assert sum(name in h for h in held) == 1, (name, held)
    assert all(held), held

    # Kill the replica that holds a0 while requests are in flight: only requests in flight
    # on it may fail, with a clean error; new requests for its adapters go to the other one.
    victim = next(i for i, h in enumerate(held) if "a0" in h)
    victim_adapters = sorted(held[victim])
    errors = []

    def tolerant(job):
        try:
            return ask(cluster.url, *job)
        except openai.APIStatusError as e:
            errors.append(e.status_code)
            return None

    in_flight = [(name, PROMPTS[0], 11) for name in victim_adapters for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(tolerant, job) for job in in_flight]
        time.sleep(0.3)
        cluster.replicas[victim][1].send_signal(signal.SIGKILL)
        results = [f.result() for f in futures]
    assert all(code in (502, 503, 504) for code in errors), errors
    assert len(errors) <= len(in_flight)
    for job, r in zip(in_flight, results):
        assert r is None or r == ref(job)
    # New requests for the dead replica's adapters (and everything else) are answered.
    survivor_url = cluster.replicas[1 - victim][0]
    for name in victim_adapters + [BASE]:
        job = (name, PROMPTS[0], 11)
        assert ask(cluster.url, *job) == ref(job)
    assert set(victim_adapters) <= resident(survivor_url)
