"""Typed Python client for hotwire (depends on hotwire.proto, never on hotwire.server)."""
