"""`facet tune` end to end on the default model: a few steps on the example data, the
PEFT directory it writes, hot-loading into a running `facet serve`, the same answer from
`facet run`, determinism, checkpoint + resume bit-exactly, and errors that name the line."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import requests
from openai import OpenAI

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FACET = os.environ.get("FACET_BIN", os.path.join(ROOT, ".build", "release", "facet"))
ENV = {**os.environ, "FACET_HOME": ROOT}
CHAT = f"{ROOT}/examples/tune/capitals_fr_chat.jsonl"
QUESTION = "What is the capital of Germany?"


def tune(*args, check=True):
    p = subprocess.run([FACET, "tune", "--data", CHAT, "--batch-size", "2", "--lr", "2e-3", *args],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="facet-tune-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_tune_hot_load_and_query(workdir):
    root = os.path.join(workdir, "adapters")
    os.makedirs(root)
    port = free_port()
    server = subprocess.Popen([FACET, "serve", "--port", str(port), "--adapter-root", root, "--kv-cache-memory", "64MB"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        out = os.path.join(root, "capitals-fr")
        p = tune("--max-steps", "2", "--out", out, "--serve-url", f"http://127.0.0.1:{port}")
        assert 'loaded into' in p.stderr and '"capitals-fr"' in p.stderr, p.stderr
        config = json.load(open(os.path.join(out, "adapter_config.json")))
        assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
        assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["task_type"] == "CAUSAL_LM"
        log = [json.loads(line) for line in open(os.path.join(out, "training_log.jsonl"))]
        assert [r["step"] for r in log] == [1, 2] and all(0 < r["loss"] < 20 for r in log)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert "capitals-fr" in [m.id for m in client.models.list().data]
        served = client.chat.completions.create(model="capitals-fr", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=24, temperature=0).choices[0].message.content
        run = subprocess.run([FACET, "run", "--chat", "--max_output_len", "24", "--input_text", QUESTION, "--lora_dir", out,
                              "--lora_task_uids", "0"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
        assert run.returncode == 0, run.stderr
        assert f'Output [Text 0 Beam 0]: "{served}"' in run.stdout
        # Training again under the same name replaces the served adapter at once.
        p = tune("--max-steps", "3", "--out", out, "--serve-url", f"http://127.0.0.1:{port}")
        again = client.chat.completions.create(model="capitals-fr", messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=24, temperature=0).choices[0].message.content
        assert isinstance(again, str)
        base = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=24, temperature=0).choices[0].message.content
        assert "Berlin" in base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_same_seed_same_adapter_and_resume_is_bit_exact(workdir):
    a, b, c = (os.path.join(workdir, n) for n in ("a", "b", "c"))
    tune("--max-steps", "3", "--out", a, "--seed", "7", "--dropout", "0.1")
    tune("--max-steps", "3", "--out", b, "--seed", "7", "--dropout", "0.1", "--save-every", "1")
    weights = lambda d: open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
    assert weights(a) == weights(b)
    assert os.path.exists(os.path.join(b, "checkpoint-1", "trainer_state.json"))
    tune("--max-steps", "3", "--out", c, "--seed", "7", "--dropout", "0.1", "--resume", os.path.join(b, "checkpoint-1"))
    assert weights(c) == weights(a)
    other = os.path.join(workdir, "d")
    tune("--max-steps", "3", "--out", other, "--seed", "8", "--dropout", "0.1")
    assert weights(other) != weights(a)


def test_bad_records_and_templates_are_named(workdir):
    bad = os.path.join(workdir, "bad.jsonl")
    with open(bad, "w") as f:
        f.write(open(CHAT).readline())
        f.write('{"messages": [{"role": "user", "content": "hi"}]}\n')
    p = subprocess.run([FACET, "tune", "--data", bad, "--out", os.path.join(workdir, "x")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert p.returncode != 0 and "line 2" in p.stderr and "assistant" in p.stderr, p.stderr
    template = os.path.join(workdir, "t.json")
    config = json.load(open(f"{ROOT}/examples/tune/template.json"))
    config["prompt_template"] = "<|VIRTUAL_PROMPT_0|> " + config["prompt_template"]
    json.dump(config, open(template, "w"))
    p = subprocess.run([FACET, "tune", "--data", f"{ROOT}/examples/tune/capitals_fr.jsonl", "--template", template, "--out", os.path.join(workdir, "y")],
                       capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert p.returncode != 0 and "LoRA tuning uses no virtual tokens" in p.stderr and "remove" in p.stderr, p.stderr


def test_activation_flags_are_validated(workdir):
    out = os.path.join(workdir, "flags")
    p = tune("--out", out, "--keep-activations", "--recompute-activations", check=False)
    assert p.returncode != 0 and "at most one of --keep-activations and --recompute-activations" in p.stderr, p.stderr
    p = tune("--out", out, "--activation-budget-mb", "-1", check=False)
    assert p.returncode != 0 and "--activation-budget-mb must be 0 or more" in p.stderr, p.stderr
    assert not os.path.exists(out)


def test_bf16_products_are_opt_in_recorded_and_validated(workdir):
    """--compute bf16 trains (the base's products in bf16), says so, records it in the
    checkpoint, and learns about as fp32 does; int8 is refused; resuming a bf16 checkpoint
    with fp32 is allowed but said."""
    fp32, bf16 = os.path.join(workdir, "fp32"), os.path.join(workdir, "bf16")
    tune("--max-steps", "4", "--out", fp32, "--seed", "3")
    p = tune("--max-steps", "4", "--out", bf16, "--seed", "3", "--compute", "bf16", "--save-every", "2")
    assert "--compute bf16" in p.stderr and ("vdpbf16ps" in p.stderr or "emulation" in p.stderr), p.stderr
    state = json.load(open(os.path.join(bf16, "checkpoint-2", "trainer_state.json")))
    assert state["products"] == "bf16", state.keys()
    losses = lambda d: [json.loads(line)["loss"] for line in open(os.path.join(d, "training_log.jsonl"))]
    a, b = losses(fp32), losses(bf16)
    assert len(a) == len(b) == 4 and a != b, (a, b)   # the mode is engaged ...
    assert all(abs(x - y) <= 0.02 * x for x, y in zip(a, b)), (a, b)   # ... and moves the loss by rounding only
    weights = lambda d: open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
    assert weights(fp32) != weights(bf16)
    p = tune("--max-steps", "4", "--out", os.path.join(workdir, "mixed"), "--resume", os.path.join(bf16, "checkpoint-2"))
    assert "trained with --compute bf16; continuing with --compute fp32" in p.stderr, p.stderr
    p = tune("--max-steps", "1", "--out", os.path.join(workdir, "int8"), "--compute", "int8", check=False)
    assert p.returncode != 0 and "--compute takes fp32 or bf16" in p.stderr, p.stderr


def test_bench_train_refuses_int8_before_loading():
    p = subprocess.run([FACET, "bench", "--train", "--compute", "int8"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert p.returncode != 0 and "facet bench --train --compute takes fp32 or bf16" in p.stderr, p.stderr
    assert "Loading" not in p.stderr, p.stderr
