"""Password hashing off the event loop: argon2id is deliberately slow, so hashes and
verifications run in worker threads, at most a few at a time, and a burst of sign-ins neither
blocks the event loop nor exhausts memory. The portal's accounts and the staff sign-in each
have slots of their own."""

from __future__ import annotations

import asyncio

from sigillo.portal.passwords import PasswordHasher


class HashSlots:
    """A base for what checks passwords (``hasher`` may be swapped, as tests do)."""

    def __init__(self, hasher: PasswordHasher, slots: int) -> None:
        self.hasher = hasher
        self._slots = asyncio.Semaphore(slots)

    async def _hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, encoded: str | None, password: str) -> bool:
        """``encoded`` None (no such account, or none that may sign in) costs a verification
        against the hasher's decoy all the same, and fails: the time taken tells nothing."""
        async with self._slots:
            if encoded is None:
                await asyncio.to_thread(self.hasher.burn, password)
                return False
            return await asyncio.to_thread(self.hasher.verify, encoded, password)

    async def _rehash(self, encoded: str | None, password: str) -> str | None:
        """A new hash of a password that has just been verified, when ``encoded`` was made
        with older parameters (stored on sign-in); None when it is current."""
        if encoded is None or not self.hasher.needs_rehash(encoded):
            return None
        return await self._hash(password)
