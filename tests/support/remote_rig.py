"""A running agent (in process, the simulator over Modbus TCP in process) behind a real
Mosquitto, with a head-end that verifies everything the agent publishes and an operator
that signs config and commands: for the remote-configuration tests.

    async with rig(tmp_path, mosquitto) as r:
        await r.send("cmd", cmd_message(r.operator, SITE, {...}, time.time()))
        ack = await r.ack("cmd/ack", n_before)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import load
from agent.jws import Signer, thumbprint, verify
from agent.keys import load_private, load_public
from agent.operator import cmd_message, config_message
from agent.remote import apply_overlay
from agent.runner import Agent
from agent.uplink import no_delay
from simulator.server import SimServer
from tests.support.mosquitto import Mosquitto
from tests.support.rig import write_config

SITE = "test-site"
BASE = f"dh/v1/{SITE}"


@dataclass
class HeadEnd:
    """Collects and verifies everything the agent publishes."""

    keys: dict[str, Any]
    got: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    raw: dict[str, list[str]] = field(default_factory=dict)

    def on(self, topic: str, payload: bytes) -> None:
        sub = topic[len(BASE) + 1 :]
        text = payload.decode()
        self.raw.setdefault(sub, []).append(text)
        env = verify(text, self.keys)
        self.got.setdefault(sub, []).append(env)
        body = env["body"]
        if sub == "event" and body.get("kind") == "key_rotated":  # learn the new key
            new = serialization.load_pem_public_key(body["new_pubkey"].encode())
            assert isinstance(new, Ed25519PublicKey)
            self.keys[thumbprint(new)] = new

    def bodies(self, sub: str) -> list[dict[str, Any]]:
        return [e["body"] for e in self.got.get(sub, [])]


@dataclass
class Rig:
    tmp: Path
    broker: Mosquitto
    head: HeadEnd
    client: aiomqtt.Client
    agent: Agent
    operator: Signer
    sim_port: int

    async def send(self, sub: str, payload: str | bytes) -> None:
        await self.client.publish(f"{BASE}/{sub}", payload, qos=1)

    async def wait(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "timed out"
            await asyncio.sleep(0.002)

    async def ack(self, sub: str, n_before: int, timeout: float = 20.0) -> dict[str, Any]:
        await self.wait(lambda: len(self.head.bodies(sub)) > n_before, timeout)
        return self.head.bodies(sub)[n_before]

    def config_msg(
        self, version: Any, partial: Any, signer: Signer | None = None, site: str = SITE
    ) -> str:
        return config_message(signer or self.operator, site, version, partial, time.time())


def start_agent(cfg_path: Path) -> tuple[Agent, asyncio.Task[None]]:
    cfg, version, problem = apply_overlay(load(cfg_path))
    assert not problem, problem
    agent = Agent(cfg, config_version=version)
    return agent, asyncio.create_task(agent.run())


async def stop_agent(agent: Agent, task: asyncio.Task[None]) -> None:
    agent.stopping.set()
    done, _ = await asyncio.wait([task], timeout=30)
    if not done:  # say where it hangs
        import io

        out = io.StringIO()
        for t in asyncio.all_tasks():
            print(f"--- {t.get_name()}", file=out)
            t.print_stack(file=out)
        raise AssertionError("the agent did not stop within 30 s:\n" + out.getvalue())
    task.result()


@asynccontextmanager
async def rig(tmp: Path, broker: Mosquitto, period_s: int = 5) -> AsyncIterator[Rig]:
    async with SimServer("steady", seed=3) as sim:
        assert sim.tcp_address is not None
        cfg_path = write_config(
            tmp, sim.tcp_address[1], broker.url, period_s, "flow_limit_m3h = 2.5\nenforce = false\n"
        )
        pub = load_public(tmp / "agent.pub")
        head = HeadEnd({thumbprint(pub): pub})
        if (tmp / "agent-rotated.key").exists():  # a head-end learns it from key_rotated
            new = load_private(tmp / "agent-rotated.key").public_key()
            head.keys[thumbprint(new)] = new
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="head-end") as client:
            no_delay(client)  # or Nagle holds each small publish back ~40 ms
            await client.subscribe(f"{BASE}/#", qos=1)

            async def listen() -> None:
                with contextlib.suppress(aiomqtt.MqttError):  # the client closes at the end
                    await listen_all()

            async def listen_all() -> None:
                async for m in client.messages:
                    if isinstance(m.payload, bytes) and not str(m.topic).endswith(
                        ("/config/set", "/cmd")
                    ):
                        head.on(str(m.topic), m.payload)

            lt = asyncio.create_task(listen())
            agent, task = start_agent(cfg_path)
            r = Rig(
                tmp,
                broker,
                head,
                client,
                agent,
                Signer(load_private(tmp / "operator.key")),
                sim.tcp_address[1],
            )
            try:
                # this boot online (the broker may still hold a retained status and
                # config/current of the previous one), and subscribed: a probe is answered
                await r.wait(
                    lambda: any(
                        b.get("state") == "online" and b.get("boot") == agent.boot
                        for b in head.bodies("status")
                    )
                )
                for _ in range(50):
                    n = len(head.bodies("cmd/ack"))
                    await r.send(
                        "cmd", cmd_message(r.operator, SITE, {"cmd": "poll_now"}, time.time())
                    )
                    try:
                        await r.ack("cmd/ack", n, 1.0)
                        break
                    except AssertionError:
                        continue
                await r.wait(lambda: bool(head.bodies("config/current")))
                yield r
            finally:
                if not task.done():
                    await stop_agent(r.agent, task)
                lt.cancel()
