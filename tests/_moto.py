"""moto's EC2 server (an emulation of the AWS EC2 API, no real cloud) behind a small bridging proxy.

Two things stand between libcloud and moto (ENVIRONMENT.md): moto answers with the XML
namespace ``http://ec2.amazonaws.com/doc/2016-11-15`` where AWS (and libcloud) use a
trailing ``/``, and moto's instances are not machines. The proxy adds the ``/`` and
rewrites every instance's public address (``<ipAddress>``) to the address of a
network-namespace host running sshd, which stands in for the instance. Both listen on
127.0.0.1 only; moto is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _broker import free_port, stop_process, wait_port
from aiohttp import web

__all__ = ["MotoEc2", "moto_ec2"]

_NS = re.compile(rb'xmlns="http://ec2\.amazonaws\.com/doc/(\d{4}-\d{2}-\d{2})"')
_IP = re.compile(rb"<ipAddress>[^<]*</ipAddress>")
_ERROR_TYPE = re.compile(rb"<Type>[^<]*</Type>")  # AWS sends Code and Message only (libcloud expects two)


@dataclass
class MotoEc2:
    endpoint: str  # the proxy: what a task's endpoint= names
    moto_url: str  # moto itself (for checks that bypass libcloud)
    requests: list[str]  # Action= of every request the proxy forwarded


@contextlib.asynccontextmanager
async def moto_ec2(tmp: Path, instance_address: str, *, check_credentials: bool = False) -> AsyncIterator[MotoEc2]:
    """moto's EC2 API behind the bridging proxy; ``check_credentials`` makes moto verify every
    request's signature against its IAM users (there are none: every request is refused)."""
    moto_port, proxy_port = free_port(), free_port()
    log = (tmp / "moto.log").open("wb")
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)], stdout=log,
        stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    requests: list[str] = []
    try:
        wait_port(moto_port, timeout=30)
        session = aiohttp.ClientSession(auto_decompress=False)

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            action = request.query.get("Action") or dict(
                p.split("=", 1) for p in body.decode(errors="replace").split("&") if "=" in p
            ).get("Action", "?")
            requests.append(action)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with session.request(
                request.method, f"http://127.0.0.1:{moto_port}{request.path_qs}", data=body, headers=headers
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                content_type = upstream.headers.get("Content-Type", "text/xml")
            payload = _NS.sub(rb'xmlns="http://ec2.amazonaws.com/doc/\1/"', payload)
            payload = _ERROR_TYPE.sub(b"", payload)
            payload = _IP.sub(b"<ipAddress>" + instance_address.encode() + b"</ipAddress>", payload)
            return web.Response(body=payload, status=status, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", proxy_port)
        await site.start()
        try:
            yield MotoEc2(f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{moto_port}", requests)
        finally:
            await runner.cleanup()
            await session.close()
    finally:
        stop_process(proc)
        log.close()
