"""Meta-workflows: references between workflows, cycles across workflows, DAG_TPS scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagon.core import ValidationError, Workflow
from dagon.core._meta_order import meta_order

from ._scripts import run_cli, run_script, write


def pair() -> tuple[Workflow, Workflow]:
    prod = Workflow("Prod")
    prod.shell("make", "echo data > out.txt")
    prod.shell("late", "cat workflow:///make/out.txt > late.txt")
    cons = Workflow("Cons")
    cons.shell("use", "cat workflow://Prod/make/out.txt > copy.txt")
    return prod, cons


def test_meta_order_puts_producers_first() -> None:
    prod, cons = pair()
    assert [wf.name for wf in meta_order([cons, prod])] == ["Prod", "Cons"]


def test_a_cycle_across_workflows_is_rejected_naming_its_tasks() -> None:
    prod, cons = pair()
    prod.shell("back", "cat workflow://Cons/use/copy.txt > x", after=["late"])
    cyclic = Workflow("Prod")
    cyclic.shell("make", "cat workflow://Cons/use/copy.txt > out.txt")
    with pytest.raises(ValidationError, match=r"dependency cycle: .*Prod/make -> Cons/use.*\(across workflows\)"):
        meta_order([cyclic, cons])
    # No task cycle, but each workflow needs the other: rejected with the reason.
    with pytest.raises(ValidationError, match="workflows reference each other"):
        meta_order([prod, cons])


def test_references_must_name_a_member_and_its_task() -> None:
    _, cons = pair()
    with pytest.raises(ValidationError, match="not part of this meta-workflow"):
        meta_order([cons])
    other = Workflow("Prod")
    other.shell("different", "true")
    with pytest.raises(ValidationError, match="has no task 'make'"):
        meta_order([other, cons])


META = """\
from dagon import Workflow
from dagon.dag_tps import DAG_TPS
from dagon.task import DagonTask, TaskType

consumer = Workflow("Consumer")
use = DagonTask(TaskType.BATCH, "Use", "cat workflow://Producer/Slow/out.txt workflow:///First/first.txt > both.txt")
consumer.add_task(DagonTask(TaskType.BATCH, "First", "echo consumer-first > first.txt"))
consumer.add_task(use)

producer = Workflow("Producer")
producer.add_task(DagonTask(TaskType.BATCH, "Slow", "sleep 0.5; echo from-producer > out.txt"))

meta = DAG_TPS("Meta-Demo")
meta.add_workflow(consumer)          # the consumer is added first on purpose
meta.add_workflow(producer)
meta.make_dependencies()
meta.run()
print(open(use.get_scratch_dir() + "/both.txt").read().split())
"""


def test_dag_tps_script_runs_consumer_after_the_producing_workflows_task(tmp_path: Path) -> None:
    script = write(tmp_path / "meta.py", META)
    out = run_script(script, cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['from-producer', 'consumer-first']"


def test_cross_workflow_cycle_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    script = write(
        tmp_path / "cycle.py",
        "from dagon import Workflow\n"
        "from dagon.task import DagonTask, TaskType\n"
        "a = Workflow('WfA')\n"
        "a.add_task(DagonTask(TaskType.BATCH, 'X', 'cat workflow://WfB/Y/y.txt > x.txt'))\n"
        "b = Workflow('WfB')\n"
        "b.add_task(DagonTask(TaskType.BATCH, 'Y', 'cat workflow://WfA/X/x.txt > y.txt'))\n",
    )
    out = run_cli("run", str(script), cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 2
    assert "dependency cycle: WfA/X -> WfB/Y -> WfA/X" in out.stderr.replace("\n", " ") or (
        "dependency cycle: WfB/Y -> WfA/X -> WfB/Y" in out.stderr.replace("\n", " ")
    ), out.stderr
    assert not (tmp_path / "home").exists()


def test_dagon_run_links_workflows_a_script_only_defines(tmp_path: Path) -> None:
    script = write(
        tmp_path / "linked.py",
        "import dagon\n"
        "cons = dagon.Workflow('Cons')\n"
        "cons.shell('use', 'tr a-z A-Z < workflow://Prod/make/out.txt > loud.txt')\n"
        "prod = dagon.Workflow('Prod')\n"
        "prod.shell('make', 'echo quiet > out.txt')\n",
    )
    out = run_cli("run", str(script), cwd=tmp_path, home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    (loud,) = list((tmp_path / "home" / "scratch").glob("Cons-*/use-1/loud.txt"))
    assert loud.read_text() == "QUIET\n"


@pytest.mark.mosquitto
def test_linked_workflows_submitted_to_a_standalone_coordinator(mosquitto: Any, tmp_path: Path) -> None:
    """`dagon submit` hands both workflows to one `dagon coordinator` (producer first);
    the consumer's task waits for the producer's and stages its file; a real agent runs both."""
    import subprocess

    from _broker import stop_process

    from ._scripts import DAGON, environ, start_agent

    # keys: the agent is enrolled with the coordinator's; the CLI shares the coordinator's home (same user)
    agent = start_agent(mosquitto.url, tmp_path / "agent", "meta-agent", coordinator_home=tmp_path / "coord")
    coordinator = subprocess.Popen(
        [*DAGON, "coordinator", "--broker", mosquitto.url, "--id", "meta"],
        env=environ(tmp_path / "coord"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        script = write(
            tmp_path / "linked.py",
            "import dagon\n"
            "cons = dagon.Workflow('Cons')\n"
            "cons.shell('use', 'tr a-z A-Z < workflow://Prod/make/out.txt > loud.txt')\n"
            "prod = dagon.Workflow('Prod')\n"
            "prod.shell('make', 'sleep 0.3; echo quiet > out.txt')\n",
        )
        for _ in range(10):  # until the coordinator process is online (its retained status)
            out = run_cli(
                "submit", str(script), "--broker", mosquitto.url, "--coordinator", "auto", "--wait",
                cwd=tmp_path, home=tmp_path / "coord", timeout=60,
            )  # fmt: skip
            if "no dagon coordinator is online" not in out.stderr:
                break
        assert out.returncode == 0, out.stdout + out.stderr
        runs = out.stdout.split()[:2]
        assert runs[0].startswith("Prod-") and runs[1].startswith("Cons-")
        (loud,) = list((tmp_path / "agent" / "scratch").glob("Cons-*/use-1/loud.txt"))
        assert loud.read_text() == "QUIET\n"

        # The standalone coordinator refuses a runtime none of its agents offers.
        nomad = write(
            tmp_path / "nomad.py",
            "from dagon import Workflow\n"
            "from dagon.task import DagonTask, TaskType\n"
            "wf = Workflow('Nomad-Remote')\n"
            "wf.add_task(DagonTask(TaskType.NOMAD, 'N', 'true', image='busybox'))\n",
        )
        out = run_cli(
            "submit", str(nomad), "--broker", mosquitto.url, "--coordinator", "auto", "--wait",
            cwd=tmp_path, home=tmp_path / "coord", timeout=60,
        )  # fmt: skip
        assert out.returncode == 2
        assert "no online agent offers runtime 'nomad' (needed by task(s) N)" in out.stderr.replace("\n", " ")
    finally:
        stop_process(agent)
        stop_process(coordinator)
