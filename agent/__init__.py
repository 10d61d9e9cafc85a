"""The dagon agent: runs tasks on a node and reports back to the coordinator.

Example::

    config = load_agent_config(config_file=None, env=os.environ, flags={"broker": url})
    async with Agent(config=config, connect=lambda will: MqttTransport(url, will=will)) as agent:
        await agent.serve_forever()
"""

from dagon.agent._agent import Agent
from dagon.agent._config import (
    AgentConfig,
    StageMode,
    default_home,
    load_agent_config,
    parse_labels,
    stable_agent_id,
)
from dagon.agent._host import capabilities, host_id
from dagon.agent._staging import StagingError, manifest, rewrite_command, stage_inputs
from dagon.agent.runtimes import (
    ApptainerRuntime,
    CharliecloudRuntime,
    DockerRuntime,
    Execution,
    Outcome,
    Runtime,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "ApptainerRuntime",
    "CharliecloudRuntime",
    "DockerRuntime",
    "Execution",
    "Outcome",
    "Runtime",
    "StageMode",
    "StagingError",
    "capabilities",
    "default_home",
    "host_id",
    "load_agent_config",
    "manifest",
    "parse_labels",
    "rewrite_command",
    "stable_agent_id",
    "stage_inputs",
]
