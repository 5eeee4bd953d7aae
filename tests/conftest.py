"""Shared pytest configuration: the real test peers (Postfix, dnsmasq, PostgreSQL)."""

pytest_plugins = ["tests.peers.fixtures"]
