"""Tensor parallelism under Open MPI's mpirun: `facet run` and `facet serve` with --tp_size N
against the one-process engine and the PEFT goldens, refusals, a killed rank, and ranks in
separate network namespaces (hosts that share nothing but TCP)."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FACET = os.environ.get("FACET_BIN", os.path.join(ROOT, ".build", "release", "facet"))
TINY = os.path.join(ROOT, "Tests", "Fixtures", "tiny_llama_untied")
ENV = {**os.environ, "FACET_HOME": ROOT, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# Oversubscribe: CI has 2 cores and the default model runs on 3 ranks.
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]
Q1, Q2 = "What is the capital of France?", "What is the capital of Germany?"
DEMO = ["run", "--chat", "--max_output_len", "48", "--input_text", Q1, Q1, Q1, Q2, Q2, Q2,
        "--lora_dir", f"{ROOT}/adapters/fr", f"{ROOT}/adapters/de", "--lora_task_uids", "-1", "0", "1", "-1", "0", "1"]

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed (scripts/setup installs it)")


def facet(args, ranks=None, mpi=(), timeout=300, check=True):
    cmd = [FACET, *args] if ranks is None else [*MPIRUN, *mpi, "-n", str(ranks), FACET, *args, "--tp_size", str(ranks)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    if check:
        assert p.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def outputs(stdout):
    return [line for line in stdout.splitlines() if line.startswith(("Input [", "Output ["))]


def rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def test_demo_on_three_ranks_prints_the_one_process_answers(tmp_path):
    one = facet([*DEMO, "--output_logits_npy", str(tmp_path / "one.npy")])
    three = facet([*DEMO, "--output_logits_npy", str(tmp_path / "three.npy")], ranks=3)
    assert len(outputs(one.stdout)) == 12
    assert outputs(three.stdout) == outputs(one.stdout)
    a, b = np.load(tmp_path / "three.npy"), np.load(tmp_path / "one.npy")
    assert a.shape == b.shape
    # Relative to each row's scale: the 30 layers' row-parallel sums are added in another
    # order (seen: 3.7e-6 of the largest logit; elementwise up to 9e-5 on logits near 10).
    rows, diff = b.reshape(-1, b.shape[-1]), np.abs(a - b).reshape(-1, b.shape[-1])
    scale = np.abs(rows).max(axis=1)
    used = scale > 0
    assert used.sum() >= 6 * 10
    assert float((diff.max(axis=1)[used] / scale[used]).max()) < 1e-5


def tiny_run(tmp, prompts, uids, adapters, ranks):
    ids = os.path.join(tmp, "ids.csv")
    with open(ids, "w") as f:
        for p in prompts:
            f.write(",".join(map(str, p)) + "\n")
    tag = f"tp{ranks or 1}"
    out_csv, out_logits = os.path.join(tmp, f"{tag}.csv"), os.path.join(tmp, f"{tag}.npy")
    args = ["run", "--model", f"{TINY}/model", "--input_file", ids, "--max_output_len", "16", "--ignore_eos",
            "--output_csv", out_csv, "--output_logits_npy", out_logits,
            "--lora_dir", *[f"{TINY}/adapters/{a}" for a in adapters], "--lora_task_uids", *map(str, uids)]
    facet(args, ranks=ranks)
    with open(out_csv) as f:
        tokens = [[int(x) for x in row] for row in csv.reader(f)]
    return tokens, np.load(out_logits)


def test_tiny_fixture_cases_on_two_ranks_match_peft_and_one_process(tmp_path):
    golden = json.load(open(f"{TINY}/golden.json"))
    names = ["plain_qv", "all_linear_r8", "attn_r16_alpha8", "embed_lora"]
    cases = ["__base__", *names]
    prompts = [golden["prompt_ids"]] * len(cases)
    uids = [-1, 0, 1, 2, 3]
    one_ids, one_logits = tiny_run(str(tmp_path), prompts, uids, names, None)
    two_ids, two_logits = tiny_run(str(tmp_path), prompts, uids, names, 2)
    for i, name in enumerate(cases):
        assert two_ids[i] == golden["cases"][name]["greedy"], name
        assert rel(two_logits[i, 0, 0], np.array(golden["cases"][name]["last_logits"])) < 1e-4, name
        assert rel(two_logits[i], one_logits[i]) < 1e-5, name
    assert two_ids == one_ids


def test_tiny_mixed_batch_on_two_ranks_matches_peft(tmp_path):
    fixture = json.load(open(f"{TINY}/mixed_batch.json"))
    names = ["plain_qv", "all_linear_r8", "embed_lora"]
    seqs = fixture["sequences"]
    uids = [names.index(s["adapter_name"]) if s["adapter_name"] in names else -1 for s in seqs]
    two_ids, two_logits = tiny_run(str(tmp_path), [s["prompt_ids"] for s in seqs], uids, names, 2)
    one_ids, one_logits = tiny_run(str(tmp_path), [s["prompt_ids"] for s in seqs], uids, names, None)
    for i, s in enumerate(seqs):
        assert two_ids[i] == s["greedy"], s["adapter_name"]
        assert rel(two_logits[i, 0, 0], np.array(s["last_logits"])) < 1e-4, s["adapter_name"]
    assert rel(two_logits, one_logits) < 1e-5
    # Deterministic from run to run: bitwise the same logits.
    again_ids, again_logits = tiny_run(str(tmp_path), [s["prompt_ids"] for s in seqs], uids, names, 2)
    assert again_ids == two_ids and np.array_equal(again_logits, two_logits)


def test_sizes_that_do_not_fit_are_refused_with_the_counts():
    p = facet(["run", "--input_text", "hi"], ranks=2, check=False)
    assert p.returncode != 0
    assert "--tp_size 2 does not divide the model's 9 query heads and 3 key/value heads" in p.stderr, p.stderr
    assert "1, 3" in p.stderr
    assert p.stderr.count("does not divide") == 1, "rank 0 reports for every rank"
    p = subprocess.run([*MPIRUN, "-n", "2", FACET, "run", "--input_text", "hi", "--tp_size", "3"], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode != 0 and "--tp_size is 3 but mpirun started 2 ranks" in p.stderr, p.stderr
    p = subprocess.run([FACET, "run", "--input_text", "hi", "--tp_size", "3"], capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode != 0 and "mpirun -n 3" in p.stderr, p.stderr
    p = subprocess.run([*MPIRUN, "-n", "2", FACET, "run", "--input_text", "hi"], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode != 0 and "pass --tp_size 2" in p.stderr, p.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, ranks=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port), "--lora", f"fr={ROOT}/adapters/fr", "--adapter-root", f"{ROOT}/adapters", "--kv-cache-memory", "64MB"]
        cmd = [FACET, *args] if ranks is None else [*MPIRUN, "-n", str(ranks), FACET, *args, "--tp_size", str(ranks)]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="facet-tp-", suffix=".log")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start: " + self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def ask(self, model, question, seed):
        r = requests.post(self.url + "/v1/chat/completions", timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 24, "temperature": 0.8, "seed": seed})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    def ranks(self):
        """{rank: pid} of this job's facet processes (from their environment)."""
        found = {}
        for pid in subprocess.run(["pgrep", "-f", "--", f"--port {self.port} "], capture_output=True, text=True).stdout.split():
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                    found[int(item.split(b"=")[1])] = int(pid)
        return found

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def test_server_on_three_ranks_answers_as_one_process_and_takes_adapters_at_run_time():
    one, three = Serve(), Serve(ranks=3)
    try:
        for server in (one, three):
            r = requests.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "de", "lora_path": f"{ROOT}/adapters/de"}, timeout=60)
            assert r.status_code == 200, r.text
        for model in ("SmolLM2-135M-Instruct.Q4_1", "fr", "de"):
            for seed, q in ((1, Q1), (2, Q2)):
                assert three.ask(model, q, seed) == one.ask(model, q, seed), model
        # Concurrent requests for different adapters share the ranks' steps.
        from concurrent.futures import ThreadPoolExecutor
        jobs = [(m, q, s) for m in ("fr", "de", "SmolLM2-135M-Instruct.Q4_1") for s, q in ((5, Q1), (6, Q2))]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda j: three.ask(*j), jobs))
        assert together == [one.ask(*j) for j in jobs]
        # SIGTERM to rank 0 drains it; then it stops the other ranks and the job ends well.
        os.kill(three.ranks()[0], signal.SIGTERM)
        assert three.proc.wait(timeout=60) == 0, three.output()
    finally:
        one.stop()
        three.stop()


def test_a_killed_rank_ends_the_job_with_a_message():
    server = Serve(ranks=3)
    try:
        ranks = server.ranks()
        assert sorted(ranks) == [0, 1, 2], ranks
        os.kill(ranks[2], signal.SIGKILL)
        code = server.proc.wait(timeout=60)
        assert code != 0
        assert "exited on signal 9" in server.output(), server.output()
        assert server.ranks() == {}, "no rank is left behind"
    finally:
        server.stop()


def test_sigterm_to_mpirun_ends_every_rank():
    server = Serve(ranks=3)
    try:
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=60)
        deadline = time.time() + 30
        while server.ranks() and time.time() < deadline:
            time.sleep(0.2)
        assert server.ranks() == {}
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2")
def test_ranks_on_separate_network_hosts_over_tcp():
    """Three 'hosts' (network namespaces joined by veth pairs to a bridge) that share no
    network stack; MPI may use TCP on 10.77.0.0/24 only (no shared-memory transport)."""
    subprocess.run([f"{ROOT}/scripts/netns-hosts", "up", "3"], check=True)
    try:
        hosts = ["--host", "10.77.0.1,10.77.0.2,10.77.0.3", "--mca", "plm_rsh_agent", f"{ROOT}/scripts/netns-rsh",
                 "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "10.77.0.0/24", "--mca", "oob_tcp_if_include", "10.77.0.0/24",
                 # No topology in shared memory: these hosts share one kernel (and a file name for it).
                 "--mca", "rtc_hwloc_vmhole", "none"]
        one = outputs(facet(DEMO).stdout)
        p = facet(DEMO, ranks=3, mpi=hosts)
        assert outputs(p.stdout) == one
        where = facet(["run", "--input_text", "hi", "--max_output_len", "1"], ranks=3, mpi=[*hosts, "--display-map"]).stdout
        assert all(f"10.77.0.{k}" in where for k in (1, 2, 3)), where
    finally:
        subprocess.run([f"{ROOT}/scripts/netns-hosts", "down", "3"])
