"""REST API benchmark: POST /api/v1/health-check of a 1 MiB image, concurrent clients, real uvicorn.

A temporary SELFHEAL_HOME; `selfheal api` started as a subprocess on 127.0.0.1 with no vision model
configured (the statistical provider: integrity + entropy statistics, no network); a viewer token from
`selfheal api token create`. CLIENTS threads each keep one request in flight for DURATION_S seconds,
every request uploading the same 1 MiB PixelRTS image (random payload: incompressible, so the PNG is
~1 MiB on the wire). Reported: requests per second sustained, p50 and p99 latency, and errors (must be 0).

  python bench/bench_api.py [--duration S] [--clients N]     (make bench runs it for 5 s with 8 clients)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENTS = 8
DURATION_S = 5.0
IMAGE_BYTES = 1 << 20
TARGET_P99_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _image(path: Path) -> bytes:
    from healing.pixelrts import encode

    payload = os.urandom(IMAGE_BYTES - 4096)  # leaves room for the metadata in a 512×512 grid
    data = encode(payload).png
    path.write_bytes(data)
    return data


def run(duration_s: float = DURATION_S, clients: int = CLIENTS) -> dict[str, float]:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="selfheal-bench-api-"))
    env = dict(os.environ, SELFHEAL_HOME=str(tmp / "home"), PYTHONPATH=str(ROOT))
    for var in ("SELFHEAL_CONFIG", "SELFHEAL_DATABASE_URL", "VLM_MODEL_PROVIDER", "VLM_MODEL_ENDPOINT"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "healing"]
    token = subprocess.run([*cli, "api", "token", "create", "bench", "--role", "viewer"], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    data = _image(tmp / "kernel.rts.png")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp / "api.log").open("wb")
    server = subprocess.Popen([*cli, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the API did not start: " + (tmp / "api.log").read_text())
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as warm:
            first = warm.post("/api/v1/health-check", files={"file": ("kernel.rts.png", data)})
            assert first.status_code == 200 and first.json()["status"] == "healthy", first.text
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + duration_s

        def client() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                while time.monotonic() < stop_at:
                    started = time.perf_counter()
                    response = http.post("/api/v1/health-check", files={"file": ("kernel.rts.png", data)})
                    took = time.perf_counter() - started
                    with lock:
                        if response.status_code == 200 and response.json()["success"]:
                            latencies.append(took)
                        else:
                            errors[0] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_s": statistics.median(latencies), "p99_s": p99, "image_bytes": len(data), "clients": clients}


def main(duration_s: float = DURATION_S, clients: int = CLIENTS) -> list[tuple[str, float, float | None]]:
    print(f"== api: POST /api/v1/health-check, 1 MiB image, {clients} concurrent clients, {duration_s:g} s ==")
    r = run(duration_s, clients)
    print(f"{r['requests']} requests in {r['seconds']:.1f} s ({r['image_bytes']} B each), {r['errors']} errors: "
          f"{r['rps']:.1f} req/s, p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms")
    return [("api health-check req/s (1 MiB)", r["rps"], None), ("api health-check p99 s (1 MiB)", r["p99_s"], TARGET_P99_S),
            ("api health-check errors", float(r["errors"]), 0.0)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args()
    main(args.duration, args.clients)
