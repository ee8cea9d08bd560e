"""`hotwire serve --workers 2`: two processes share the port, a killed worker is restarted, and /metrics sums
every worker's counts (prometheus-client multiprocess mode)."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from hotwire.server.config import bundled_repository
from onnx_models import write_model


def metric(port: int, name: str, model: str = "classifier") -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f"# TYPE {name} counter" in body
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', body, re.MULTILINE)
    assert match, body
    return float(match.group(1))


def infer_on_new_connections(port: int, count: int) -> None:
    x = np.random.default_rng(3).random((1, 16), dtype=np.float32)
    session = ort.InferenceSession(
        str(bundled_repository() / "classifier" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {"input": x})[0]
    for _ in range(count):  # the kernel spreads connections, not calls, across workers: one client each
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("input", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(
            client.infer("classifier", [tensor]).as_numpy("probabilities"), expected, rtol=1e-6
        )
        client.close()


def worker_pids(log: str) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d) started \(pid (\d+)\)", log)}


def test_two_workers_serve_one_port_restart_when_killed_and_sum_their_metrics(serve):
    process = serve("--workers", "2", "--grpc-port", "0", "--metrics-port", "0", "--host", "127.0.0.1")
    port = process.wait_listening(timeout=120)
    assert process.metrics_port is not None
    first = worker_pids(process.log)
    assert len(first) == 2 and len(set(first.values())) == 2
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    # a worker's ModelStatistics counts its own requests only: not exact for the server, so not advertised
    assert "statistics" not in client.get_server_metadata().extensions
    assert "model_repository" in client.get_server_metadata().extensions
    client.close()
    infer_on_new_connections(port, 40)
    time.sleep(2.5)  # workers publish their counts every second
    assert metric(process.metrics_port, "nv_inference_request_success") == 40
    assert metric(process.metrics_port, "nv_inference_count") == 40

    os.kill(first[0], signal.SIGKILL)
    process.wait_for(f"worker 0 (pid {first[0]}) exited with signal 9; restarting it")
    infer_on_new_connections(port, 10)  # the surviving worker serves meanwhile
    process.wait_for("[worker 0]", timeout=5)
    for _ in range(200):
        if len(re.findall(r"\[worker 0\].*hotwire listening", process.log)) == 2:
            break
        time.sleep(0.1)
    restarted = worker_pids(process.log)
    assert restarted[0] != first[0] and restarted[1] == first[1]
    infer_on_new_connections(port, 10)
    time.sleep(2.5)
    # the killed worker's last published counts are kept, so the sum never goes down
    assert metric(process.metrics_port, "nv_inference_request_success") == 60
    assert process.stop() == 0
    assert "all workers stopped" in process.log


def test_workers_that_refuse_to_start_stop_the_supervisor_at_once(serve, tmp_path):
    """--exit-on-error=true and a model that fails: each worker refuses to start; the supervisor stops, exit
    1, without restarting workers that would refuse again."""
    write_model(tmp_path, "broken", b"not an onnx model")
    process = serve(
        "--workers",
        "2",
        "--model-repository",
        str(tmp_path),
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--exit-on-error=true",
    )
    assert process.proc.wait(120) == 1
    process.wait_for("refused to start as configured")
    assert "--exit-on-error: model broken failed to load" in process.log
    assert "restarting it" not in process.log and "hotwire listening" not in process.log


MIG_SLICE = "MIG-1a2b3c4d-0000-4111-8222-333344445555"


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def test_devices_start_workers_per_device_each_seeing_only_its_own(serve, tmp_path):
    """--devices from HOTWIRE_DEVICES (a worker inherits the variable and must not supervise in turn) with
    --workers 2: four workers, device-major, each with CUDA_VISIBLE_DEVICES set to its one device; the
    supervisor's /metrics labels each live worker with its device. CPU models: the launcher is the point."""
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "classifier").symlink_to(bundled_repository() / "classifier")
    process = serve(
        "--model-repository", str(repository), "--workers", "2", "--grpc-port", "0", "--metrics-port", "0",
        "--http-port", "-1", "--host", "127.0.0.1",
        env={"HOTWIRE_DEVICES": f"{MIG_SLICE},1", "CUDA_VISIBLE_DEVICES": "0,1"},
    )  # fmt: skip
    port = process.wait_listening(timeout=180)
    pids = worker_pids(process.log)
    assert len(pids) == 4, process.log
    expected = {0: MIG_SLICE, 1: MIG_SLICE, 2: "1", 3: "1"}
    for index, pid in pids.items():
        env = environment_of(pid)
        assert env["CUDA_VISIBLE_DEVICES"] == expected[index]
        assert "HOTWIRE_DEVICES" not in env and "HOTWIRE_WORKERS" not in env
    assert f"on CUDA device {MIG_SLICE} (CUDA_VISIBLE_DEVICES)" in process.log
    assert f"4 workers on devices {MIG_SLICE},1" in process.log
    infer_on_new_connections(port, 8)
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10).read().decode()
    )
    (family,) = [f for f in text_string_to_metric_families(body) if f.name == "hotwire_worker_info"]
    info = [(int(s.labels["worker"]), s.labels["device"], int(s.labels["pid"])) for s in family.samples]
    assert all(s.value == 1 for s in family.samples)
    assert sorted(info) == sorted((index, expected[index], pid) for index, pid in pids.items()), body
    assert process.stop() == 0


def test_a_malformed_device_list_is_a_usage_error(serve):
    for devices in ("MIG-1,MIG-1", "gpu0", ","):
        process = serve("--devices", devices, "--grpc-port", "0")
        assert process.proc.wait(60) == 2
        process._collector.join(10)
        assert "--devices" in process.log, process.log
