"""`facet perplexity` against an independent computation of the same quantity through the
server's echo + prompt log-probabilities (which match transformers' prompt logits): the text
in chunks of ctx tokens, each scored on its second half, exp of the mean negative
log-likelihood."""
import math
import os
import re
import subprocess

import requests

from conftest import BASE, FACET, ROOT

TEXT = os.path.join(ROOT, "README.md")


def facet_perplexity(*args):
    r = subprocess.run([FACET, "perplexity", *args], capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT}, timeout=600)
    return r


def reference(server, model, ctx, chunks):
    text = open(TEXT, encoding="utf-8").read()
    tokens = requests.post(server.url + "/tokenize", json={"model": BASE, "prompt": text}, timeout=60).json()["tokens"]
    nll = []
    for c in range(min(len(tokens) // ctx, chunks)):
        ids = tokens[c * ctx:(c + 1) * ctx]
        r = requests.post(server.url + "/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 0, "echo": True,
                                                                "logprobs": 0}, timeout=120)
        assert r.status_code == 200, r.text
        lps = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        nll += [-lp for lp in lps[ctx // 2 + 1:ctx]]
    return math.exp(sum(nll) / len(nll)), len(nll)


def test_perplexity_equals_the_echo_logprobs(server):
    out = facet_perplexity(TEXT, "-c", "64", "--chunks", "3")
    assert out.returncode == 0, out.stderr
    ppl = float(re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out.stdout).group(1))
    want, n = reference(server, BASE, 64, 3)
    assert n == 3 * 31
    assert abs(ppl - want) / want < 1e-4, (ppl, want)
    assert re.search(r"^\[1\][\d.]+,\[2\][\d.]+,\[3\][\d.]+,$", out.stdout, flags=re.M)
    # With an adapter: the same through the adapter.
    out = facet_perplexity(TEXT, "-c", "64", "--chunks", "2", "--lora_dir", os.path.join(ROOT, "adapters", "fr"))
    assert out.returncode == 0, out.stderr
    ppl_fr = float(re.search(r"PPL = ([\d.]+)", out.stdout).group(1))
    want_fr, _ = reference(server, "fr", 64, 2)
    assert abs(ppl_fr - want_fr) / want_fr < 1e-4, (ppl_fr, want_fr)


def test_perplexity_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    r = facet_perplexity(str(short), "-c", "512")
    assert r.returncode != 0 and "fewer than one chunk" in r.stderr
    r = facet_perplexity(str(tmp_path / "missing.txt"))
    assert r.returncode != 0 and "cannot read" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    r = facet_perplexity(str(bad))
    assert r.returncode != 0 and "UTF-8" in r.stderr
