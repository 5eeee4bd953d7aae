"""Real mail peers for the test suite: Postfix as the recipients' MX, dnsmasq as their DNS.

See `tests.peers.fixtures` for the pytest fixtures built on them.
"""
