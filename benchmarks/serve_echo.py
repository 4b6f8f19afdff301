"""Serve's floor for ``benchmarks/serve_load.py``'s breakdown cells (a module of its own, without
``from __future__ import annotations``: FastAPI resolves these annotations in the replicas).

``Echo``: Serve's proxy and one FastAPI replica that reads the body and answers ``{"ok": true}``.
``EchoHop``: the same plus one handle call to a second deployment that returns True (the hop
our ingress makes to a model replica). Replicas reserve no CPU, as our ingress does.
"""

from typing import Any

from fastapi import FastAPI, Request
from ray import serve

single = FastAPI()
hop = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(single)
class Echo:
    @single.post("/")
    async def echo(self, request: Request) -> dict:
        await request.body()
        return {"ok": True}


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Leaf:
    async def __call__(self, size: int) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(hop)
class EchoHop:
    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf

    @hop.post("/")
    async def echo(self, request: Request) -> dict:
        body = await request.body()
        return {"ok": await self.leaf.remote(len(body))}


def apps() -> tuple[Any, Any]:
    return Echo.bind(), EchoHop.bind(Leaf.bind())
