"""Load on the HTTP server (``bench.serve=true``): 1, 8 and 32 concurrent clients on loopback
send single test sentences for a fixed time; sentences/s, latency percentiles, errors, and the
server's memory. The server is ``scripts/serve.py`` in its own process, as a user runs it."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from mt.commands import BenchmarkRunConfig
from mt.data.corpus import load_split

SERVE = Path(__file__).resolve().parents[2] / "scripts" / "serve.py"


def benchmark_serving(cfg: BenchmarkRunConfig) -> dict:
    sources = [s for s in load_split(cfg.data, cfg.data.test_split)["src"] if s.strip()]
    server = subprocess.Popen(
        [
            sys.executable,
            str(SERVE),
            f"checkpoint={cfg.checkpoint}",
            "port=0",
            f"beam_size={cfg.decode.beam_size}",
            f"precision={cfg.decode.precision}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stderr.readline()
        found = re.search(r"http://([\d.]+):(\d+)/", line)
        if not found:
            raise ValueError(f"the server did not start: {line}{server.stderr.read()}")
        url = f"http://{found.group(1)}:{found.group(2)}"
        results = {"beam_size": cfg.decode.beam_size, "precision": cfg.decode.precision}
        for clients in cfg.bench.serve_clients:
            results[f"clients_{clients}"] = {
                **load(url, sources, clients, cfg.bench.serve_seconds),
                **server_memory(server.pid),
            }
        one = results.get("clients_1", {}).get("sentences_per_s")
        for clients in cfg.bench.serve_clients:
            if one and clients != 1:
                row = results[f"clients_{clients}"]
                row["speedup_vs_1_client"] = round(row["sentences_per_s"] / one, 2)
        return results
    finally:
        server.terminate()
        server.wait(timeout=60)


def load(url: str, sources: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads, each sending one sentence at a time for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = time.monotonic()
    stop = start + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = i
            while time.monotonic() < stop:
                sent = time.monotonic()
                try:
                    ok = http.post("/translate", json={"text": sources[n % len(sources)]})
                    if ok.status_code != 200:
                        errors[i] += 1
                        continue
                except httpx.HTTPError:
                    errors[i] += 1
                    continue
                latencies[i].append(time.monotonic() - sent)
                n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    done = np.array([x for per_client in latencies for x in per_client])
    if not done.size:
        return {"sentences": 0, "errors": sum(errors)}
    p50, p95, p99 = np.percentile(done, [50, 95, 99])
    return {
        "sentences": int(done.size),
        "sentences_per_s": round(done.size / elapsed, 1),
        "latency_p50_s": round(float(p50), 4),
        "latency_p95_s": round(float(p95), 4),
        "latency_p99_s": round(float(p99), 4),
        "errors": sum(errors),
    }


def server_memory(pid: int) -> dict:
    """The server's resident memory now and at its peak (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return {
        "server_rss_mb": round(int(values.get("VmRSS", 0)) / 1024, 1),
        "server_peak_rss_mb": round(int(values.get("VmHWM", 0)) / 1024, 1),
    }
