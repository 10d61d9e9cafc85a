"""MQTT topic builders and filters — the only place topic strings are made.

Tree (``{run}`` is the run id, ``{task}`` the task name as written, escaped)::

    dagon/v1/agents/{agent}/status        retained Announce; Last Will = Offline
    dagon/v1/agents/{agent}/tasks         AssignTasks / CancelTasks (to the agent)
    dagon/v1/agents/{agent}/control       Control (to the agent)
    dagon/v1/agents/{agent}/telemetry     Heartbeat and telemetry (from the agent)
    dagon/v1/agents/{agent}/telemetry/json  public JSON telemetry (dagon.telemetry/1)
    dagon/v1/coordinator/{id}/inbox       TasksStarted / TasksFinished / Ack / SubmitRun / CancelRun
    dagon/v1/coordinator/{id}/status      retained JSON: coordinator online/offline
    dagon/v1/runs/{run}/status            retained JSON run status
    dagon/v1/runs/{run}/events            JSON events
    dagon/v1/runs/{run}/tasks/{task}/result   retained JSON task result
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "PREFIX",
    "agent_control",
    "agent_status",
    "agent_tasks",
    "agent_telemetry",
    "agent_telemetry_json",
    "all_agent_telemetry_json",
    "all_agent_status",
    "all_agent_telemetry",
    "all_coordinator_status",
    "coordinator_inbox",
    "coordinator_status",
    "escape_level",
    "parse_level",
    "run_events",
    "run_status",
    "run_task_result",
    "run_task_results",
    "unescape_level",
]

PREFIX: Final = "dagon/v1"

# '%' is escaped too so the mapping is reversible.
_ESCAPES: Final = {"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\x00": "%00"}
_UNESCAPES: Final = {v: k for k, v in _ESCAPES.items()}


def escape_level(name: str) -> str:
    """Make ``name`` usable as one topic level (no ``/ + #`` or NUL, reversible)."""
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


def agent_status(agent: str) -> str:
    return f"{PREFIX}/agents/{escape_level(agent)}/status"


def agent_tasks(agent: str) -> str:
    return f"{PREFIX}/agents/{escape_level(agent)}/tasks"


def agent_control(agent: str) -> str:
    return f"{PREFIX}/agents/{escape_level(agent)}/control"


def agent_telemetry(agent: str) -> str:
    return f"{PREFIX}/agents/{escape_level(agent)}/telemetry"


def all_agent_status() -> str:
    return f"{PREFIX}/agents/+/status"


def all_agent_telemetry() -> str:
    return f"{PREFIX}/agents/+/telemetry"


def coordinator_inbox(coordinator: str) -> str:
    return f"{PREFIX}/coordinator/{escape_level(coordinator)}/inbox"


def coordinator_status(coordinator: str) -> str:
    return f"{PREFIX}/coordinator/{escape_level(coordinator)}/status"


def all_coordinator_status() -> str:
    return f"{PREFIX}/coordinator/+/status"


def run_status(run: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/status"


def run_events(run: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/events"


def run_task_result(run: str, task: str) -> str:
    return f"{PREFIX}/runs/{escape_level(run)}/tasks/{escape_level(task)}/result"


def run_task_results(run: str) -> str:
    """Filter matching every task result of a run."""
    return f"{PREFIX}/runs/{escape_level(run)}/tasks/+/result"


def agent_telemetry_json(agent: str) -> str:
    """Public JSON telemetry of an agent (schema ``dagon.telemetry/1``)."""
    return f"{PREFIX}/agents/{escape_level(agent)}/telemetry/json"


def all_agent_telemetry_json() -> str:
    return f"{PREFIX}/agents/+/telemetry/json"
