"""hotwire.clients over TLS, mutual TLS and with a bearer key, against the real server on 127.0.0.1:
multiplexed and unary inference equal to in-process onnxruntime, blocking and async; the failures raise the
family the status belongs to (Unavailable for a refused handshake, Unauthenticated, PermissionDenied)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from credentials import write_key_file
from hotwire.clients import AsyncClient, Client, PermissionDenied, Unauthenticated, Unavailable
from onnx_models import SIMPLE_CONFIG, add_sub, ort_reference, simple_inputs, write_model

VERSION_1 = add_sub(offset=1.0)  # module-level: ort_reference caches its session by the model's id
INFER_KEY = "client-infer-key"
ADMIN_KEY = "client-admin-key"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for version in (1, 2):
        model = add_sub(offset=float(version))
        write_model(tmp_path / "models", "simple", model, SIMPLE_CONFIG, version=version)
    config = tmp_path / "models" / "simple" / "config.pbtxt"
    config.write_text(SIMPLE_CONFIG + "version_policy { all { } }\n")
    return tmp_path / "models"


def _assert_answers(client: Client) -> None:
    feeds = simple_inputs(3)
    result = client.infer("simple", feeds, version="1")
    expected = ort_reference(VERSION_1, feeds)
    for name, array in expected.items():
        np.testing.assert_array_equal(result[name], array)


def test_tls_multiplexed_and_unary_blocking_and_async(running_server, repository, pki):
    server = running_server(repository, tls_cert=pki.cert, tls_key=pki.key)
    url = f"localhost:{server.app.grpc_port}"
    for multiplex in (True, False):
        with Client(url, tls_ca=pki.ca, multiplex=multiplex) as client:
            _assert_answers(client)
            assert client.server_live()
    with Client(url, tls_ca=pki.ca.read_bytes()) as client:  # PEM bytes as well as a path
        _assert_answers(client)

    async def main() -> np.ndarray:
        async with AsyncClient(url, tls_ca=pki.ca) as client:
            return (await client.infer("simple", simple_inputs(2), version="1"))["OUTPUT0"]

    feeds = simple_inputs(2)
    np.testing.assert_array_equal(asyncio.run(main()), ort_reference(VERSION_1, feeds)["OUTPUT0"])

    # plain text to a TLS server, and TLS trusting only the system's CAs (not this server's), are Unavailable
    for kwargs in ({}, {"tls": True}):
        with Client(url, timeout=5, retries=0, **kwargs) as client:
            with pytest.raises(Unavailable):
                client.infer("simple", simple_inputs(1))
            with pytest.raises(Unavailable):
                client.server_live()


def test_mutual_tls_sends_the_client_certificate(running_server, repository, pki):
    server = running_server(repository, tls_cert=pki.cert, tls_key=pki.key, tls_client_ca=pki.ca)
    url = f"localhost:{server.app.grpc_port}"
    with Client(url, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key) as client:
        _assert_answers(client)
    for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
        with Client(url, tls_ca=pki.ca, tls_cert=cert, tls_key=key, timeout=5, retries=0) as client:
            with pytest.raises(Unavailable):
                client.infer("simple", simple_inputs(1))


def test_bearer_key_over_tls_for_inference_and_admin_calls(running_server, repository, pki, tmp_path):
    keys = write_key_file(tmp_path / "keys", {INFER_KEY: "infer", ADMIN_KEY: "admin"})
    server = running_server(repository, tls_cert=pki.cert, tls_key=pki.key, api_keys=keys)
    url = f"localhost:{server.app.grpc_port}"
    for multiplex in (True, False):
        with Client(url, tls_ca=pki.ca, token=INFER_KEY, multiplex=multiplex) as client:
            _assert_answers(client)
            assert client.model_metadata("simple").name == "simple"
            with pytest.raises(PermissionDenied, match="admin"):
                client.rollback("simple", 1)
        for token in (None, "not-a-key"):
            with Client(url, tls_ca=pki.ca, token=token, multiplex=multiplex, retries=0) as client:
                with pytest.raises(Unauthenticated):
                    client.infer("simple", simple_inputs(1))
    assert server.app.registry.route("simple", "").version == 2
    with Client(url, tls_ca=pki.ca, token=ADMIN_KEY) as admin:
        assert admin.rollback("simple", 1).version == "1"
    assert server.app.registry.route("simple", "").version == 1

    async def main() -> None:
        async with AsyncClient(url, tls_ca=pki.ca, token=INFER_KEY) as client:
            feeds = simple_inputs(2)
            result = await client.infer("simple", feeds, version="1")
            expected = ort_reference(VERSION_1, feeds)["OUTPUT1"]
            np.testing.assert_array_equal(result["OUTPUT1"], expected)
        async with AsyncClient(url, tls_ca=pki.ca, retries=0) as client:
            with pytest.raises(Unauthenticated):
                await client.infer("simple", simple_inputs(1))

    asyncio.run(main())
