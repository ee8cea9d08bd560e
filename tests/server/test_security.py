"""TLS, mTLS and API keys through the real server: tritonclient (gRPC and HTTP), raw gRPC and HTTP, metrics,
and `--workers`."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from credentials import Pki, write_key_file
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from hotwire.server.app import App
from hotwire.server.config import ServerConfig
from hotwire.server.errors import ConfigError
from hotwire.server.http_service import HttpService
from onnx_models import SIMPLE_CONFIG, add_sub, ort_reference, simple_inputs, write_model

MODEL = add_sub()
INFER_KEY = "infer-key-for-tests"
ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path / "models", "simple", MODEL, SIMPLE_CONFIG)
    return tmp_path / "models"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key_file(tmp_path / "keys", {INFER_KEY: "infer", ADMIN_KEY: "admin"})


def _grpc_infer(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None = None) -> None:
    feeds = simple_inputs(2)
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("simple", inputs, headers=headers)
    expected = ort_reference(MODEL, feeds)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


def _http_infer(client: httpclient.InferenceServerClient, headers: dict[str, str] | None = None) -> None:
    feeds = simple_inputs(3, seed=4)
    inputs = []
    for name, array in feeds.items():
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer("simple", inputs, headers=headers)
    expected = ort_reference(MODEL, feeds)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


def _client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _https_get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return response.status, response.read()


def _grpc_status(error: InferenceServerException) -> str:
    return str(error.status())


# ----- TLS -----------------------------------------------------------------------------------------------


def test_tls_on_grpc_http_and_metrics(running_server, repository, pki):
    server = running_server(repository, tls_cert=pki.cert, tls_key=pki.key, metrics_port=0)
    with grpcclient.InferenceServerClient(
        f"localhost:{server.app.grpc_port}", ssl=True, root_certificates=str(pki.ca)
    ) as client:
        assert client.is_server_live()
        _grpc_infer(client)
    client = httpclient.InferenceServerClient(
        f"localhost:{server.app.http_port}", ssl=True, ssl_options={"ca_certs": str(pki.ca)}
    )
    _http_infer(client)
    client.close()
    status, body = _https_get(f"https://localhost:{server.app.metrics_port}/metrics", _client_context(pki))
    assert status == 200 and b"nv_inference_request_success" in body

    # plain text is refused on every port
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                pb.ServerLiveRequest(), timeout=5
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    for port in (server.app.http_port, server.app.metrics_port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
        connection.close()


def test_mtls_requires_a_client_certificate_from_the_trusted_ca(running_server, repository, pki):
    server = running_server(
        repository, tls_cert=pki.cert, tls_key=pki.key, tls_client_ca=pki.ca, metrics_port=0
    )
    address = f"localhost:{server.app.grpc_port}"
    with grpcclient.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    ) as client:
        _grpc_infer(client)
    for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
        credentials = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(),
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        with grpc.secure_channel(address, credentials) as channel:
            with pytest.raises(grpc.RpcError) as error:
                grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    pb.ServerLiveRequest(), timeout=5
                )
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE

    client = httpclient.InferenceServerClient(
        f"localhost:{server.app.http_port}",
        ssl=True,
        ssl_options={
            "ca_certs": str(pki.ca),
            "certfile": str(pki.client_cert),
            "keyfile": str(pki.client_key),
        },
    )
    _http_infer(client)
    client.close()
    for port in (server.app.http_port, server.app.metrics_port):
        url = f"https://localhost:{port}/" + (
            "metrics" if port == server.app.metrics_port else "v2/health/live"
        )
        assert _https_get(url, _client_context(pki, pki.client_cert, pki.client_key))[0] == 200
        for context in (_client_context(pki), _client_context(pki, pki.stranger_cert, pki.stranger_key)):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                _https_get(url, context)


def test_wrong_tls_files_stop_the_start_naming_the_flag(repository, pki, tmp_path):
    base = ServerConfig(model_repository=repository, host="127.0.0.1", grpc_port=0, http_port=0)
    cases = [
        ({"tls_cert": pki.cert}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": pki.ca}, "--tls-client-ca needs --tls-cert"),
        ({"tls_cert": pki.cert, "tls_key": tmp_path / "nope.key"}, "no such file"),
        ({"tls_cert": pki.cert, "tls_key": pki.client_key}, "matching private key"),
        ({"tls_cert": pki.cert, "tls_key": pki.key, "tls_client_ca": pki.key}, "--tls-client-ca"),
        ({"api_keys": tmp_path / "no-keys"}, "--api-keys"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            App(ServerConfig(**{**base.__dict__, **overrides}))


# ----- API keys ------------------------------------------------------------------------------------------


def test_keys_on_grpc_inference_admin_and_open_calls(running_server, repository, key_file):
    server = running_server(
        repository, api_keys=key_file, model_control_mode="explicit", load_model=("simple",)
    )
    with grpcclient.InferenceServerClient(server.address) as client:
        # liveness, readiness and grpc.health stay open
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple")
        with pytest.raises(InferenceServerException, match="missing credentials") as error:
            _grpc_infer(client)
        assert _grpc_status(error.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="unknown API key") as error:
            _grpc_infer(client, {"authorization": "Bearer not-a-key"})
        assert _grpc_status(error.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="missing credentials"):
            client.get_model_metadata("simple")
        _grpc_infer(client, {"authorization": f"Bearer {INFER_KEY}"})
        _grpc_infer(client, {"authorization": f"Bearer {ADMIN_KEY}"})  # admin implies infer
        assert client.get_model_metadata("simple", headers={"authorization": f"Bearer {INFER_KEY}"}).name == (
            "simple"
        )
        # admin calls need the admin role, from loopback too
        for call in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException, match="needs 'admin'") as error:
                call("simple", headers={"authorization": f"Bearer {INFER_KEY}"})
            assert _grpc_status(error.value) == "StatusCode.PERMISSION_DENIED"
        assert client.is_model_ready("simple")
        client.unload_model("simple", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert not client.is_model_ready("simple")
        client.load_model("simple", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert client.is_model_ready("simple")
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="simple", id="s1")
        for name, array in simple_inputs(1).items():
            request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        with pytest.raises(grpc.RpcError) as stream_error:
            list(stub.ModelStreamInfer(iter([request]), timeout=10))
        assert stream_error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(
            stub.ModelStreamInfer(
                iter([request, request]), timeout=10, metadata=(("authorization", f"Bearer {INFER_KEY}"),)
            )
        )
        assert [a.error_message for a in answers] == ["", ""] and answers[0].infer_response.id == "s1"


def test_keys_on_http(running_server, repository, key_file):
    server = running_server(
        repository, api_keys=key_file, model_control_mode="explicit", load_model=("simple",)
    )

    def call(
        method: str, path: str, key: str | None = None, body: bytes | None = None
    ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=10)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        connection.close()
        return response

    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/simple/ready"):
        assert call("GET", path).status == 200
    refused = call("GET", "/v2/models/simple")
    assert refused.status == 401 and refused.getheader("WWW-Authenticate") == "Bearer"
    assert b"missing credentials" in refused.body  # type: ignore[attr-defined]
    assert call("GET", "/v2/models/simple", "wrong").status == 401
    assert call("GET", "/v2/models/simple", INFER_KEY).status == 200
    assert call("POST", "/v2/repository/index", INFER_KEY, b"{}").status == 200
    denied = call("POST", "/v2/repository/models/simple/unload", INFER_KEY, b"{}")
    assert denied.status == 403 and b"needs 'admin'" in denied.body  # type: ignore[attr-defined]
    assert call("POST", "/v2/repository/models/simple/unload", ADMIN_KEY, b"{}").status == 200
    assert call("GET", "/v2/models/simple/ready").status == 400  # unloaded
    assert call("POST", "/v2/repository/models/simple/load", ADMIN_KEY, b"{}").status == 200

    client = httpclient.InferenceServerClient(server.http_address)
    with pytest.raises(InferenceServerException, match="missing credentials"):
        _http_infer(client)
    _http_infer(client, {"authorization": f"Bearer {INFER_KEY}"})
    client.close()


def test_tritonclient_with_tls_and_a_bearer_key(running_server, repository, pki, key_file):
    """tritonclient over TLS with a bearer key works; without a key it gets UNAUTHENTICATED."""
    server = running_server(repository, tls_cert=pki.cert, tls_key=pki.key, api_keys=key_file)
    with grpcclient.InferenceServerClient(
        f"localhost:{server.app.grpc_port}", ssl=True, root_certificates=str(pki.ca)
    ) as client:
        _grpc_infer(client, {"authorization": f"Bearer {INFER_KEY}"})
        with pytest.raises(InferenceServerException) as error:
            _grpc_infer(client)
        assert _grpc_status(error.value) == "StatusCode.UNAUTHENTICATED"
    client = httpclient.InferenceServerClient(
        f"localhost:{server.app.http_port}", ssl=True, ssl_options={"ca_certs": str(pki.ca)}
    )
    _http_infer(client, {"authorization": f"Bearer {INFER_KEY}"})
    with pytest.raises(InferenceServerException, match="missing credentials"):
        _http_infer(client)
    client.close()


# ----- admin calls without keys: loopback only ------------------------------------------------------------


def test_without_keys_admin_calls_from_the_network_are_refused(running_server, repository):
    """Through the data plane the HTTP frontend serves (the peer address is what the socket reported)."""
    server = running_server(repository, model_control_mode="explicit", load_model=("simple",))
    service = HttpService(server.app.plane, server.app.access)

    def handle(path: str, peer: str) -> tuple[int, bytes]:
        answer = server.call(service.handle("POST", path, {}, b"{}", None, peer))
        return answer.status, answer.body

    status, body = handle("/v2/repository/models/simple/unload", "192.0.2.10")
    assert status == 403 and b"--api-keys" in body
    assert handle("/v2/repository/index", "192.0.2.10")[0] == 200  # reads stay open
    assert server.app.registry.is_ready("simple", "")
    assert handle("/v2/repository/models/simple/unload", "127.0.0.1")[0] == 200
    assert not server.app.registry.is_ready("simple", "")


def _own_network_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (the route to a public address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # UDP connect sends nothing; it only picks the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_without_keys_grpc_admin_from_a_non_loopback_address_is_refused(running_server, repository):
    address = _own_network_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    server = running_server(repository, host="0.0.0.0", model_control_mode="explicit", load_model=("simple",))
    with grpcclient.InferenceServerClient(f"{address}:{server.app.grpc_port}") as remote:
        _grpc_infer(remote)  # inference stays open
        with pytest.raises(InferenceServerException, match="only from this machine") as error:
            remote.unload_model("simple")
        assert _grpc_status(error.value) == "StatusCode.PERMISSION_DENIED"
        assert remote.is_model_ready("simple")
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.app.grpc_port}") as local:
        local.unload_model("simple")
        assert not local.is_model_ready("simple")


# ----- workers and the start-up warning -------------------------------------------------------------------


def test_workers_serve_tls_and_keys_and_warn_when_exposed(serve, repository, pki, key_file):
    process = serve(
        "--model-repository",
        str(repository),
        "--host",
        "0.0.0.0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--workers",
        "2",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
        "--api-keys",
        str(key_file),
    )
    port = process.wait_listening()
    assert "without" not in process.log  # TLS and keys: no exposure warning
    with grpcclient.InferenceServerClient(
        f"localhost:{port}", ssl=True, root_certificates=str(pki.ca)
    ) as client:
        for _ in range(4):  # connections are balanced across the workers
            _grpc_infer(client, {"authorization": f"Bearer {INFER_KEY}"})
        with pytest.raises(InferenceServerException) as error:
            _grpc_infer(client)
        assert _grpc_status(error.value) == "StatusCode.UNAUTHENTICATED"
    status, body = _https_get(f"https://localhost:{process.metrics_port}/metrics", _client_context(pki))
    assert status == 200 and b"nv_inference_request_success" in body
    assert process.stop() == 0

    exposed = serve(
        "--model-repository", str(repository), "--host", "0.0.0.0", "--grpc-port", "0", "--metrics-port", "-1"
    )
    exposed.wait_listening()
    warning = [line for line in exposed.log.splitlines() if "without TLS" in line]
    assert warning and "API keys" in warning[0] and "SECURITY.md" in warning[0], exposed.log
    assert exposed.stop() == 0


def test_bad_key_file_exits_2_naming_the_line(serve, repository, tmp_path):
    path = tmp_path / "keys"
    path.write_text("admin hunter2\n")
    process = serve("--model-repository", str(repository), "--grpc-port", "0", "--api-keys", str(path))
    assert process.proc.wait(60) == 2
    process.stop()
    assert "line 1" in process.log and "not the key itself" in process.log


def test_admin_commands_send_the_key_over_tls(running_server, tmp_path, pki, key_file):
    for version in (1, 2):
        write_model(
            tmp_path / "repo", "simple", add_sub(offset=float(version)), SIMPLE_CONFIG, version=version
        )
    config = tmp_path / "repo" / "simple" / "config.pbtxt"
    config.write_text(SIMPLE_CONFIG + "version_policy { all { } }\n")
    server = running_server(tmp_path / "repo", tls_cert=pki.cert, tls_key=pki.key, api_keys=key_file)
    url = f"localhost:{server.app.grpc_port}"

    def command(*args: str, env_key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "HOTWIRE_API_KEY"}
        if env_key:
            env["HOTWIRE_API_KEY"] = env_key
        return subprocess.run(
            [sys.executable, "-m", "hotwire.server", *args, "--url", url, "--tls-ca", str(pki.ca)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    refused = command("rollback", "simple", "--to", "1")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    denied = command("rollback", "simple", "--to", "1", "--api-key", INFER_KEY)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    done = command("rollback", "simple", "--to", "1", "--api-key", ADMIN_KEY)
    assert done.returncode == 0 and "traffic now on version 1" in done.stdout, done.stderr
    done = command("traffic", "simple", "--stable", "2", env_key=ADMIN_KEY)
    assert done.returncode == 0, done.stderr
    assert server.app.registry.route("simple", "").version == 2


def test_an_uploaded_model_cannot_read_files_through_external_data(running_server, tmp_path):
    """Issue 11 item 1: a planted model read a secret back through an ONNX external-data initializer."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOPSECRET")
    (tmp_path / "repo").mkdir()
    server = running_server(tmp_path / "repo", model_control_mode="explicit")
    for location in (str(secret), "../../../../../../../.." + str(secret)):
        weights = onnx.TensorProto(name="w", data_type=onnx.TensorProto.UINT8, dims=[9])
        weights.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "9")):
            weights.external_data.add(key=key, value=value)
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["w"], ["y"])],
            "planted",
            [],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [9])],
            [weights],
        )
        # not tiny_model: onnx's checker refuses such a path itself, and a hostile client runs no checker
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        model.ir_version = 8
        with grpcclient.InferenceServerClient(server.address) as client:
            with pytest.raises(InferenceServerException) as error:
                client.load_model(
                    "planted",
                    config='{"name": "planted", "backend": "onnxruntime", "max_batch_size": 0}',
                    files={"file:1/model.onnx": model.SerializeToString()},
                )
            assert "External data path" in error.value.message()
            assert "TOPSECRET" not in error.value.message()
            assert not client.is_model_ready("planted")


def test_security_md_states_the_defaults_the_server_uses():
    text = (Path(__file__).parents[2] / "SECURITY.md").read_text()
    rows = {
        line.split("|")[2].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "`--" in line
    }
    defaults = ServerConfig(model_repository=Path("."))
    expected = {
        "`--max-inflight`": f"{defaults.max_inflight}",
        "`--max-request-tensors`": f"{defaults.max_request_tensors}",
        "`--max-request-rows`": f"{defaults.max_request_rows:,}",
        "`--max-model-batch-size`": f"{defaults.max_model_batch_size}",
        "`--max-model-instances`": f"{defaults.max_model_instances}",
        "`--max-buffer-bytes`": f"{defaults.max_buffer_bytes // 2**30} GiB",
        "`--rate-limit`, `--rate-burst`": "off" if defaults.rate_limit == 0 else "on",
        "`--caller-rate-limit`, `--caller-burst`": "off" if defaults.caller_rate_limit == 0 else "on",
    }
    for flag, value in expected.items():
        assert flag in rows, flag
        assert rows[flag].split("|")[3].strip() == value, rows[flag]
