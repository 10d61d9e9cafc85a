"""The dagon agent: runs tasks on a node and reports back to the coordinator."""

from dagon.agent._agent import Agent
from dagon.agent._config import AgentConfig, load_agent_config, parse_labels, stable_agent_id
from dagon.agent._staging import StagingError, manifest, rewrite_command, stage_inputs

__all__ = [
    "Agent",
    "AgentConfig",
    "StagingError",
    "load_agent_config",
    "manifest",
    "parse_labels",
    "rewrite_command",
    "stable_agent_id",
    "stage_inputs",
]
