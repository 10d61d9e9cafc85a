"""The plan of a dry run: what a run would do, computed with no side effect at all.

Nothing here writes to the file system, starts a broker or publishes anything:
a dry run validates, and says which tasks would run where, after what, staging
which files from where. With a broker, :func:`agents_on` only *reads* the
agents' retained status messages (a subscription; nothing is published) so the
plan can name the agents that could run each task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from dagon.core import Workflow, unmet_constraint
from dagon.core._config import env_mqtt_protocol
from dagon.core._model import RUNTIMES_BUILTIN
from dagon.protocol import AgentId, Announce, Capabilities, Codec, DagonError, ProtocolError, topics
from dagon.protocol.transport import MqttTransport, redact_url

__all__ = ["agents_on", "lookup_agents", "plan_text"]

Agents = Sequence[tuple[str, Capabilities]]


async def agents_on(broker: str, *, quiet: float = 0.5, limit: float = 3.0) -> list[tuple[str, Capabilities]]:
    """The online agents of ``broker``, from their retained status (read-only)."""
    protocol = env_mqtt_protocol(os.environ)
    codec = Codec(sender="dry-run")
    found: dict[str, Capabilities] = {}
    client_id = f"dagon-dry-run-{os.getpid()}-{os.urandom(2).hex()}"
    async with MqttTransport(broker, client_id=client_id, protocol=protocol) as transport:
        await transport.subscribe(topics.all_agent_status())
        messages = transport.messages()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(quiet):
                    msg = await anext(messages)
            except TimeoutError:
                break
            if not msg.payload:
                continue
            with contextlib.suppress(ProtocolError):
                message = codec.decode(msg.payload).message
                if isinstance(message, Announce):
                    found[message.agent] = message.capabilities
                else:
                    found.pop(getattr(message, "agent", ""), None)
    return sorted(found.items())


def lookup_agents(broker: str | None) -> tuple[Agents | None, str]:
    """``(agents, note)``: the broker's agents for a plan, or None and why not (never raises)."""
    if not broker:
        return None, ""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return None, "agents not looked up (called inside an event loop)"
    try:
        return asyncio.run(agents_on(broker)), ""
    except (DagonError, OSError) as exc:
        return None, f"agents not looked up: {exc}"


_SECRET_WORDS = ("secret", "password", "passwd", "token", "key_options", "credential")


def _shown(key: str, value: Any) -> str:
    """An option for the plan; values of secret-looking keys are not printed."""
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "<hidden>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shown(str(k), v)}" for k, v in value.items()) + "}"
    return repr(value)


def _where(task: Any, *, broker: str | None, agents: Agents | None = None) -> str:
    if agents is not None:
        fit = [a for a, caps in agents if unmet_constraint(task, caps, AgentId(a)) is None]
        if fit:
            return "one of the agents " + ", ".join(fit) if len(fit) > 1 else f"agent {fit[0]}"
        why = "; ".join(f"{a}: {unmet_constraint(task, caps, AgentId(a))}" for a, caps in agents) or "none online"
        return f"NO online agent can run it now ({why})"
    if task.agent:
        where = f"agent {task.agent}"
    elif task.host:
        where = f"the agent at {task.host} (with none online there: over SSH, the 'ssh' runtime)"
    elif broker:
        where = f"any agent of {redact_url(broker)} offering runtime {task.runtime!r}"
    else:
        where = "the embedded agent on this machine"
        if task.runtime not in RUNTIMES_BUILTIN:
            where += f" (needs runtime {task.runtime!r} installed on it)"
    if task.labels:
        where += " with " + ",".join(f"{k}={v}" for k, v in task.labels.items())
    if task.device:
        where += f" that has device {task.device}"
    return where


def plan_text(workflow: Workflow, *, broker: str | None = None, agents: Agents | None = None, note: str = "") -> str:
    """What a run of ``workflow`` would do (raises ValidationError if it is invalid).

    Args:
        broker: where it would run (None: the embedded default).
        agents: the broker's online agents (from :func:`agents_on`), to name who could run what.
        note: a line to add (e.g. why agents could not be looked up).
    """
    graph = workflow.graph(external=True)
    lines = [f"workflow {workflow.name!r}: {len(graph.order)} task(s), valid"]
    if broker:
        lines.append(
            f"  broker {redact_url(broker)}" + (f": {len(agents)} agent(s) online" if agents is not None else "")
        )
    if note:
        lines.append(f"  ({note})")
    scratch = getattr(getattr(workflow, "ini", None), "scratch_dir_base", None)
    if scratch is not None and not broker:
        run_base = workflow.ini.run_base  # type: ignore[attr-defined]
        where = f"{scratch}/{run_base}" if run_base else str(scratch)
        lines.append(f"  scratch directories under {where}, named <epoch ms>-<task> as DAGonStar names them")
    for name in graph.order:
        task = workflow[name]
        deps = ", ".join(sorted(graph.deps[name])) or "-"
        lines.append(f"  {name}  [{task.runtime}] after: {deps}; runs on {_where(task, broker=broker, agents=agents)}")
        if task.runtime_options:
            opts = ", ".join(f"{k}={_shown(k, v)}" for k, v in sorted(task.runtime_options.items()))
            lines.append(f"      options: {opts}")
        if task.map_over:
            lines.append(f"      map: one task per file matching {task.map_over} (decided when its producer ends)")
        external = {r.text for r in graph.external.get(name, ())}
        for ref in graph.refs_of(name):
            if ref.text in external:
                lines.append(f"      stages {ref.path!r} from {ref.task} of workflow {ref.workflow} ({ref.text})")
            else:
                lines.append(f"      stages {ref.path!r} from {ref.task} ({ref.text})")
        if task.after:
            lines.append(f"      explicit edges: after {', '.join(task.after)}")
    return "\n".join(lines)
