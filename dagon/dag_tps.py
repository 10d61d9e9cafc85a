"""DAGonStar compatibility: ``from dagon.dag_tps import DAG_TPS`` (meta-workflows)."""

from dagon._dagonstar._meta import DAG_TPS

__all__ = ["DAG_TPS"]
