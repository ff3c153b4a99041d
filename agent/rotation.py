"""Key rotation that a restart at any point leaves safe.

1. a new key is written beside the database as ``agent-rotated.key.new`` (0600, atomic):
   the state file of a rotation in progress; the agent still signs with its old key;
2. the ``key_rotated`` announcement (new kid and public key) is stored as an event signed
   by the old key;
3. once the broker has acknowledged it (waited for at most ``wait_s``), the new key is
   renamed to ``agent-rotated.key`` (atomic, the folder fsynced) and used from then on.

A restart before 3 finds the pending key: the agent signs with the old key, announces the
pending key if no stored event does yet, and completes the switch (``Rotation.resume``).
So no message is ever signed by a key that no stored announcement introduced before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.atomicfile import fsync_dir, write_atomic
from agent.ed25519 import SignKey, load_private_pem, new_private_pem, public_pem
from agent.jws import Signer, thumbprint
from agent.keys import load_signing_key

log = logging.getLogger("dh.remote")

ACTIVE_NAME = "agent-rotated.key"
PENDING_NAME = "agent-rotated.key.new"


def announcement(old_kid: str, new: SignKey) -> dict[str, Any]:
    pub = new.public_key()
    pem = public_pem(pub)
    return {
        "kind": "key_rotated",
        "old_kid": old_kid,
        "new_kid": thumbprint(pub),
        "new_pubkey": pem,
    }


def write_pending(path: Path) -> SignKey:
    """A new key (PKCS#8 PEM, as ``dh-agent keygen`` writes it), made without
    ``cryptography`` (see ``agent.ed25519.new_private_pem``)."""
    pem = new_private_pem()
    write_atomic(path, pem)  # mkstemp: 0600 from the start
    return load_private_pem(pem)


def switch(pending: Path, active: Path) -> None:
    os.replace(pending, active)
    fsync_dir(active.parent)


class Rotation:
    """The agent's side: ``start`` (the ``rotate_key`` command) and ``resume`` (start-up)."""

    def __init__(
        self,
        folder: Path,
        signer: Callable[[], Signer],
        set_signer: Callable[[Signer], None],
        emit: Callable[[dict[str, Any]], Awaitable[None]],
        announced: Callable[[str], Awaitable[bool]],
        delivered: Callable[[], Awaitable[bool]],
    ) -> None:
        self.pending = folder / PENDING_NAME
        self.active = folder / ACTIVE_NAME
        self.signer = signer
        self.set_signer = set_signer
        self.emit = emit
        self.announced = announced  # a stored key_rotated event names this kid
        self.delivered = delivered  # the broker has every stored event

    async def start(self, wait_s: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self.pending.exists():  # one in progress: finish that one
            new = await loop.run_in_executor(None, load_signing_key, self.pending)
        else:
            new = await loop.run_in_executor(None, write_pending, self.pending)
        kid = thumbprint(new.public_key())
        switched = await self._complete(new, wait_s)
        return {"new_kid": kid} if switched else {"new_kid": kid, "switched": False}

    async def resume(self, wait_s: float = 30.0, every_s: float = 5.0) -> None:
        """At start-up: finish a rotation a restart interrupted (retried until done)."""
        while self.pending.exists():
            new = await asyncio.get_running_loop().run_in_executor(
                None, load_signing_key, self.pending
            )
            log.warning(
                "key rotation to %s was interrupted: completing it", thumbprint(new.public_key())
            )
            if await self._complete(new, wait_s):
                return
            await asyncio.sleep(every_s)

    async def _complete(self, new: SignKey, wait_s: float) -> bool:
        kid = thumbprint(new.public_key())
        if not await self.announced(kid):
            await self.emit(announcement(self.signer().kid, new))
        if not await self.announced(kid):  # not stored (degraded storage): switch later
            return False
        # the announcement leaves first: wait (bounded) until the broker has it, so a
        # head-end knows the new key before the first message signed by it
        for _ in range(max(1, int(wait_s / 0.1))):
            if await self.delivered():
                break
            await asyncio.sleep(0.1)
        await asyncio.get_running_loop().run_in_executor(None, switch, self.pending, self.active)
        self.set_signer(Signer(new))
        log.info("signing with the rotated key %s", kid)
        return True
