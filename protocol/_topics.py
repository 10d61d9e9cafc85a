"""MQTT topic builders and filters — the only place topic strings are made.

Two trees, so that one subscription gives a person every public document and nothing binary:

* ``dagon/v1/#`` — public JSON only (MQTT 5 content type ``application/json``), for any
  subscriber: ``mosquitto_sub -t 'dagon/v1/#' -v`` prints readable text and nothing else;
* ``dagon/wire/v1/#`` — the signed msgpack protocol between coordinators, agents and
  clients (binary; consumers need ``dagon.protocol.Codec``).

Public (``{run}`` is the run id, ``{task}`` the task name as written, escaped)::

    dagon/v1/runs/{run}/status                  retained run status (dagon.run-status/1)
    dagon/v1/runs/{run}/events                  events (dagon.events/1)
    dagon/v1/runs/{run}/tasks/{task}/result     retained task result (dagon.task-result/1)
    dagon/v1/runs/{run}/tasks/{task}/readings   live sensor readings (dagon.reading/1)
    dagon/v1/agents/{agent}/telemetry/json      node telemetry (dagon.telemetry/1)
    dagon/v1/coordinator/{id}/status            retained coordinator online/offline (dagon.coordinator/1)
    dagon/v1/coordinator/{id}/agents/{agent}    retained agent status as that coordinator sees it
                                                (dagon.agent-status/1)

Wire (signed msgpack)::

    dagon/wire/v1/agents/{agent}/status      retained Announce; Last Will = Offline
    dagon/wire/v1/agents/{agent}/tasks       AssignTasks / CancelTasks (to the agent)
    dagon/wire/v1/agents/{agent}/control     Control (to the agent)
    dagon/wire/v1/agents/{agent}/telemetry   Heartbeat and telemetry (from the agent)
    dagon/wire/v1/coordinator/{id}/inbox     TasksStarted / TasksFinished / Ack / SubmitRun / CancelRun / ResumeRun
    dagon/wire/v1/clients/{client}/answers   Answer (from a coordinator to one client)
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "PREFIX",
    "ROOT",
    "WIRE_PREFIX",
    "agent_control",
    "agent_of",
    "agent_status",
    "agent_tasks",
    "agent_telemetry",
    "agent_telemetry_json",
    "all_agent_status",
    "all_agent_telemetry",
    "all_agent_telemetry_json",
    "all_coordinator_agents",
    "all_coordinator_status",
    "all_run_task_results",
    "client_answers",
    "coordinator_agent",
    "coordinator_inbox",
    "coordinator_status",
    "escape_level",
    "is_dagon_topic",
    "parse_level",
    "payload_limit",
    "run_events",
    "run_status",
    "run_task_readings",
    "run_task_result",
    "run_task_results",
    "unescape_level",
]

ROOT: Final = "dagon"
PREFIX: Final = "dagon/v1"  # public JSON documents only
WIRE_PREFIX: Final = "dagon/wire/v1"  # the signed msgpack protocol
_WIRE_AGENTS: Final = f"{WIRE_PREFIX}/agents/"

# '%' is escaped too so the mapping is reversible.
# Control characters too: brokers refuse topics holding them as malformed packets (Mosquitto
# drops the publisher's connection), so a name with a newline must never reach a topic raw.
_ESCAPES: Final = {
    "%": "%25", "/": "%2F", "+": "%2B", "#": "%23",
    **{chr(c): f"%{c:02X}" for c in (*range(0x20), 0x7F)},
}  # fmt: skip
_UNESCAPES: Final = {v: k for k, v in _ESCAPES.items()}


def escape_level(name: str) -> str:
    """Make ``name`` usable as one topic level (no ``/ + #`` or control characters, reversible)."""
    if not name:
        raise ValueError("a topic level cannot be empty")
    if not any(c in name for c in _ESCAPES):
        return name
    return "".join(_ESCAPES.get(c, c) for c in name)


def unescape_level(level: str) -> str:
    if "%" not in level:
        return level
    out = []
    i = 0
    while i < len(level):
        chunk = level[i : i + 3]
        if level[i] == "%" and chunk.upper() in _UNESCAPES:
            out.append(_UNESCAPES[chunk.upper()])
            i += 3
        else:
            out.append(level[i])
            i += 1
    return "".join(out)


def parse_level(topic: str, index: int) -> str:
    """Return the unescaped topic level at ``index`` (0-based)."""
    return unescape_level(topic.split("/")[index])


# Per-topic size limits for internal messages, checked before anything else: an agent's
# status (Announce, Offline) and control messages are small, its telemetry topic carries
# heartbeats listing up to 1000 held attempts. Task topics and inboxes use the codec's limit
# (assignments and submitted workflows can be large; their sender must be trusted anyway).
STATUS_LIMIT: Final = 256 * 1024
TELEMETRY_LIMIT: Final = 1024 * 1024
CONTROL_LIMIT: Final = 64 * 1024
_LIMITS: Final = {"status": STATUS_LIMIT, "telemetry": TELEMETRY_LIMIT, "control": CONTROL_LIMIT}


def agent_of(topic: str) -> tuple[str, str] | None:
    """``(agent, kind)`` of a per-agent wire topic (``kind``: ``status``, ``tasks``, ``control``,
    ``telemetry``), else ``None``."""
    if not topic.startswith(_WIRE_AGENTS):
        return None
    levels = topic[len(_WIRE_AGENTS) :].split("/")
    if len(levels) != 2 or not levels[0]:
        return None
    return unescape_level(levels[0]), levels[1]


def is_dagon_topic(topic: str) -> bool:
    """Whether ``topic`` is one of dagon's own (public or wire)."""
    return topic == ROOT or topic.startswith(ROOT + "/")


def payload_limit(topic: str) -> int | None:
    """The largest internal message accepted on ``topic`` (``None``: the codec's own limit)."""
    found = agent_of(topic)
    return _LIMITS.get(found[1]) if found is not None else None


def agent_status(agent: str) -> str:
    return f"{WIRE_PREFIX}/agents/{escape_level(agent)}/status"


def agent_tasks(agent: str) -> str:
    return f"{WIRE_PREFIX}/agents/{escape_level(agent)}/tasks"


def agent_control(agent: str) -> str:
    return f"{WIRE_PREFIX}/agents/{escape_level(agent)}/control"


def agent_telemetry(agent: str) -> str:
    return f"{WIRE_PREFIX}/agents/{escape_level(agent)}/telemetry"


def all_agent_status() -> str:
    return f"{WIRE_PREFIX}/agents/+/status"


def all_agent_telemetry() -> str:
    return f"{WIRE_PREFIX}/agents/+/telemetry"


def coordinator_inbox(coordinator: str) -> str:
    return f"{WIRE_PREFIX}/coordinator/{escape_level(coordinator)}/inbox"


def coordinator_agent(coordinator: str, agent: str) -> str:
    """Public JSON status of ``agent`` as ``coordinator`` sees it (retained, ``dagon.agent-status/1``)."""
    return f"{PREFIX}/coordinator/{escape_level(coordinator)}/agents/{escape_level(agent)}"


def all_coordinator_agents() -> str:
    return f"{PREFIX}/coordinator/+/agents/+"


def coordinator_status(coordinator: str) -> str:
    return f"{PREFIX}/coordinator/{escape_level(coordinator)}/status"


def all_coordinator_status() -> str:
    return f"{PREFIX}/coordinator/+/status"


def client_answers(client: str) -> str:
    """Where coordinators answer the requests of client ``client`` (its ``reply_to``)."""
    return f"{WIRE_PREFIX}/clients/{escape_level(client)}/answers"


def run_status(run: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/status"


def run_events(run: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/events"


def run_task_result(run: str, task: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/tasks/{escape_level(task)}/result"


def all_run_task_results() -> str:
    """Filter matching every task result of every run."""
    return f"{PREFIX}/runs/+/tasks/+/result"


def run_task_readings(run: str, task: str) -> str:
    """Live readings of a sensor task (JSON, not retained)."""
    return f"{PREFIX}/runs/{escape_level(run)}/tasks/{escape_level(task)}/readings"


def run_task_results(run: str) -> str:
    """Filter matching every task result of a run."""
    return f"{PREFIX}/runs/{escape_level(run)}/tasks/+/result"


def agent_telemetry_json(agent: str) -> str:
    """Public JSON telemetry of an agent (schema ``dagon.telemetry/1``)."""
    return f"{PREFIX}/agents/{escape_level(agent)}/telemetry/json"


def all_agent_telemetry_json() -> str:
    return f"{PREFIX}/agents/+/telemetry/json"
