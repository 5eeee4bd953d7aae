"""End-to-end tests: the portal in headless Chromium against the real gateway and peers."""
