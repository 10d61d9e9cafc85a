"""DAGonStar compatibility: ``from dagon.dag_tps import DAG_TPS`` (meta-workflows).

``DAG_TPS(name)``, ``add_workflow(wf)``, ``make_dependencies()``, ``set_dry()``,
``as_json()`` and ``run()`` as in DAGonStar; the members run together on one
coordinator (see :class:`dagon.MetaWorkflow`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagon._meta import MetaWorkflow

__all__ = ["DAG_TPS"]


class DAG_TPS(MetaWorkflow):
    """A DAGonStar meta-workflow; ``max_threads`` is accepted and unused (agents have slots)."""

    def __init__(
        self,
        name: str,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        config_file: str | os.PathLike[str] = "dagon.ini",
        max_threads: int = 10,
    ) -> None:
        super().__init__(name, config=config, config_file=config_file)
        self.max_threads = max_threads
