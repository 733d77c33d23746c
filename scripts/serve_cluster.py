#!/usr/bin/env python3
"""N `facet serve` replicas sharing one --adapter-root, behind HAProxy on one port, with
adapter affinity (deploy/haproxy.cfg: a consistent hash of the request's `model`).

    scripts/serve-cluster N [--port P] [--adapter-root DIR] [--balance hash|roundrobin] [-- SERVE ARGS...]

Replicas listen on P+1 ... P+N (loopback); HAProxy on P. Installs HAProxy (Debian's
package) when it is missing. Ctrl-C (or SIGTERM) stops everything.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FACET = os.environ.get("FACET_BIN", os.path.join(ROOT, ".build", "release", "facet"))


def ensure_haproxy():
    if shutil.which("haproxy"):
        return
    print("installing haproxy (Debian's package)...", file=sys.stderr)
    if subprocess.run(["apt-get", "install", "-y", "-q", "haproxy"], stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "haproxy"], check=True, stdout=subprocess.DEVNULL)


def wait_healthy(url, proc, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


class Cluster:
    """Starts the replicas and HAProxy; `stop()` ends them. `replicas[i]` is (url, process)."""

    def __init__(self, n, port, adapter_root, balance="hash", serve_args=(), log_dir=None):
        ensure_haproxy()
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="facet-cluster-")
        self.replicas, self.procs = [], []
        try:
            for i in range(n):
                rport = port + 1 + i
                log = open(os.path.join(self.log_dir, f"replica{i + 1}.log"), "w")
                args = [FACET, "serve", "--port", str(rport), "--adapter-root", adapter_root, *serve_args]
                p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "FACET_HOME": ROOT})
                self.procs.append(p)
                self.replicas.append((f"http://127.0.0.1:{rport}", p))
            for url, p in self.replicas:
                if not wait_healthy(url, p):
                    raise RuntimeError(f"replica {url} did not start; see {self.log_dir}")
            template = open(os.path.join(ROOT, "deploy", "haproxy.cfg")).read()
            servers = "".join(f"    server r{i + 1} {url[7:]}\n" for i, (url, _) in enumerate(self.replicas))
            config = re.sub(r"(    # BEGIN replicas\n).*?(    # END replicas)", lambda m: m.group(1) + servers + m.group(2), template, flags=re.S)
            config = config.replace("bind 127.0.0.1:8000", f"bind 127.0.0.1:{port}")
            if balance != "hash":
                config = re.sub(r"    balance hash .*\n    hash-type consistent\n", f"    balance {balance}\n", config)
            self.config = os.path.join(self.log_dir, "haproxy.cfg")
            with open(self.config, "w") as f:
                f.write(config)
            log = open(os.path.join(self.log_dir, "haproxy.log"), "w")
            self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", self.config], stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(self.haproxy)
            if not wait_healthy(self.url, self.haproxy, 30):
                raise RuntimeError(f"haproxy did not start; see {self.log_dir}/haproxy.log")
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    argv = sys.argv[1:]
    serve_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, serve_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, help="number of replicas")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--adapter-root", default=os.path.join(ROOT, "adapters"))
    parser.add_argument("--balance", default="hash", choices=["hash", "roundrobin", "leastconn"])
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("N must be at least 1")
    cluster = Cluster(args.n, args.port, os.path.abspath(args.adapter_root), args.balance, serve_args)
    print(f"cluster ready on {cluster.url}: {args.n} replicas on ports {args.port + 1}-{args.port + args.n}, "
          f"balance {args.balance}, logs in {cluster.log_dir}", flush=True)
    stop = lambda *_: (cluster.stop(), sys.exit(0))  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(p.poll() is None for p in cluster.procs):
        time.sleep(1)
    print("a process of the cluster exited; stopping", file=sys.stderr)
    cluster.stop()
    sys.exit(1)


if __name__ == "__main__":
    main()
