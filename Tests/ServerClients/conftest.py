"""Starts `facet serve` on the default model with the demo adapters for the client tests."""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FACET = os.environ.get("FACET_BIN", os.path.join(ROOT, ".build", "release", "facet"))
BASE = "SmolLM2-135M-Instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, extra=(), api_key=None):
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.adapter_root = tempfile.mkdtemp(prefix="facet-adapters-")
        for name in ("fr", "de"):
            shutil.copytree(os.path.join(ROOT, "adapters", name), os.path.join(self.adapter_root, name))
        args = [FACET, "serve", "--port", str(self.port), "--served-model-name", BASE,
                "--lora", f"fr={ROOT}/adapters/fr", "--adapter-root", self.adapter_root,
                "--grpc-port", str(self.grpc_port), "--max-batch-size", "32", "--max-num-tokens", "256", "--kv-cache-memory", "256MB", "--max-lora-memory", "256MB",
                *extra]
        if api_key:
            args += ["--api-key", api_key]
        self.log = open(os.path.join(self.adapter_root, "server.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "FACET_HOME": ROOT})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("facet serve exited: " + open(self.log.name).read())
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1):
                        return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("facet serve did not start in time")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def facet_run(*args):
    """Runs `facet run` and returns its Output lines' texts."""
    out = subprocess.run([FACET, "run", *args], capture_output=True, text=True, env={**os.environ, "FACET_HOME": ROOT}, timeout=300)
    assert out.returncode == 0, out.stderr
    import re
    # Outputs may span lines: each runs from its Output marker to the next Input marker.
    parts = re.split(r'^Input \[Text \d+\]: .*$', out.stdout, flags=re.M)
    texts = []
    for part in parts:
        m = re.search(r'^Output \[Text \d+ Beam 0\]: "(.*)"\n?\Z', part, flags=re.M | re.S)
        if m:
            texts.append(m.group(1))
    return texts


def pytest_sessionfinish(session, exitstatus):
    """With FACET_NO_SKIP=1 (the test command sets it) a skipped test fails the run: every
    client the tests need is installed there, so a skip means something is missing."""
    if os.environ.get("FACET_NO_SKIP") == "1" and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        skipped = reporter.stats.get("skipped", []) if reporter else []
        if skipped:
            print(f"\nFACET_NO_SKIP: {len(skipped)} tests were skipped (a client or tool is missing)")
            session.exitstatus = 1
