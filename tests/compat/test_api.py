"""The DAGonStar API in-process: launch/wait, statuses, scratch dirs, explicit edges, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import dagon
from dagon import DataMover, Status, TaskFailed, ValidationError
from dagon.task import DagonTask, TaskType


def demo(tmp_path: Path) -> tuple[dagon.Workflow, list[DagonTask]]:
    wf = dagon.Workflow("Api-Demo", config={"batch": {"scratch_dir_base": str(tmp_path / "scratch")}})
    a = DagonTask(TaskType.BATCH, "A", "echo a > a.txt")
    b = DagonTask(TaskType.BATCH, "B", "cat workflow:///A/a.txt > b.txt")
    c = DagonTask(TaskType.CHECKPOINT, "C", "workflow:///B/b.txt")  # files kept, as in DAGonStar
    for t in (a, b, c):
        wf.add_task(t)
    c.add_dependency_to(b)  # explicit edge, no data
    wf.make_dependencies()
    return wf, [a, b, c]


def test_launch_and_wait_update_statuses_and_scratch_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGON_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGON_BROKER", raising=False)
    wf, (a, b, c) = demo(tmp_path)
    assert [t.name for t in c.prevs] == ["B"] and [t.name for t in a.nexts] == ["B"]
    assert wf.find_task_by_name("Api-Demo", "B") is b and wf.find_task_by_name("Other", "B") is None
    assert wf.get_scratch_dir_base() == str(tmp_path / "scratch")
    assert a.status is Status.READY and a.get_scratch_dir() is None
    wf.set_data_mover(DataMover.COPY)
    assert wf["B"].stage_mode == "copy"
    wf.launch()
    result = wf.wait(timeout=60)
    assert result is not None and result.ok
    assert [t.status for t in (a, b, c)] == [Status.FINISHED] * 3
    assert Path(b.get_scratch_dir() or "", "b.txt").read_text() == "a\n"
    assert str(tmp_path / "scratch") in (b.get_scratch_dir() or "")
    assert result["C"].state is dagon.TaskState.SUCCEEDED
    assert Path(c.get_scratch_dir() or "", "Api-Demo", "B", "b.txt").read_text() == "a\n"


def test_errors_say_what_to_change(tmp_path: Path) -> None:
    wf = dagon.Workflow("Bad", config={})
    wf.add_task(DagonTask(TaskType.BATCH, "A", "cat workflow:///B/x > y"))
    wf.add_task(DagonTask(TaskType.BATCH, "B", "cat workflow:///A/y > x"))
    with pytest.raises(ValidationError, match="dependency cycle"):
        wf.make_dependencies()
    with pytest.raises(ValidationError, match="add_task takes a DagonTask"):
        wf.add_task("A")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="was not launched"):
        wf.wait()
    resume = tmp_path / "checkpoint.json"
    resume.write_text("{}")
    ok = dagon.Workflow("Ok", config={})
    ok.add_task(DagonTask(TaskType.BATCH, "A", "true"))
    with pytest.raises(dagon.DagonError, match=r"was not written by dagon .* remove it to start afresh"):
        ok.run(str(resume))
    assert issubclass(TaskFailed, dagon.DagonError)


def test_scratch_dir_base_includes_run_base_and_has_a_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGON_HOME", str(tmp_path / "home"))
    wf = dagon.Workflow("Base", {"scratch_dir_base": "rel", "run_base": "run-__MILLIS__"})  # flat: [batch]
    base = Path(wf.get_scratch_dir_base())
    assert base.parent == Path.cwd() / "rel" and base.name.startswith("run-") and base.name[4:].isdigit()
    assert wf.get_scratch_dir_base() == str(base)  # fixed for the workflow, as DAGonStar's
    assert dagon.Workflow("NoIni", config={}).get_scratch_dir_base() == str(tmp_path / "home" / "scratch")
    with pytest.raises(dagon.ConfigError, match="config mixes sections and settings"):
        dagon.Workflow("Mixed", {"batch": {}, "remove_dir": False})
