"""Prometheus metrics: a private registry served on --metrics-port.

It owns every Prometheus object; today the process collectors (CPU, memory, file descriptors).
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)


def start_metrics_server(host: str, port: int) -> WSGIServer:
    """Serve /metrics on a daemon thread; port 0 picks a free one (read it from `.server_port`)."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
