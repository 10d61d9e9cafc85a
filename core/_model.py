"""The workflow model: tasks, their options, and the builder API.

>>> wf = Workflow("demo")
>>> a = wf.shell("A", "echo hi > out.txt")
>>> b = wf.shell("B", "cat workflow:///A/out.txt > copy.txt")
>>> sorted(wf.graph().deps["B"])
['A']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from dagon.core._containers import check_container_options
from dagon.core._errors import ValidationError
from dagon.core._options import check_task_options
from dagon.core._refs import Reference, check_name, check_relative_path, find_references
from dagon.protocol import ProtocolError, check_plain

__all__ = ["RUNTIMES_BUILTIN", "Graph", "Retry", "Task", "Workflow"]

RUNTIMES_BUILTIN: Final = frozenset({"process", "python", "sensor", "actuator"})  # every agent has these
SPEC_VERSION: Final = 1
_STAGE_MODES: Final = frozenset({"", "symlink", "hardlink", "copy"})
# One shared, immutable empty mapping for the (usual) tasks without env, kwargs or
# labels: at 100,000 tasks three empty dicts each would cost ~19 MB.
EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy: ``attempts`` extra tries, capped jittered exponential backoff."""

    attempts: int = 0
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"retries must be >= 0, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise ValueError("retry backoff must be >= 0 and max_backoff >= backoff")


@dataclass(slots=True, eq=False)
class Task:
    """One node of a workflow. Build it with :meth:`Workflow.shell` or :meth:`Workflow.python`.

    Attributes:
        name: unique within its workflow.
        command: the shell command (runtime ``process``) or ``module:function``
            (runtime ``python``); may contain ``workflow://`` references.
        runtime: which agent runtime runs it.
        after: names of tasks that must succeed first (besides those referenced).
        inputs: extra ``workflow://`` references to stage, not written in the command.
        outputs: globs of the files that make up the task's output (default: all).
        env: extra environment variables.
        timeout: seconds before the agent kills it (None: no limit).
        retry: the retry policy.
        cpus, memory: resources the task needs (memory in bytes).
        labels: an agent must carry all these labels to run it.
        agent: pin the task to one agent id.
        stage_mode: how inputs are staged on the same host: copy (the task's own copy, a reflink where the
            file system has them), symlink (container runtimes only, bound read-only; others get a copy),
            hardlink (deprecated: a copy); "" = agent default.
        runtime_options: runtime-specific settings as plain data (e.g. a container's ``image``);
            each runtime documents and validates its own keys.
        map_over: a ``workflow:///PRODUCER/GLOB`` reference: the task is a template expanded
            at run time into one task per file of the producer's output matching the glob
            (see :mod:`dagon.core._patterns`); "" for an ordinary task.
        arch: the agent's machine architecture must be this (e.g. ``x86_64``, ``aarch64``; "" = any).
        host: run on an agent of this host: one announcing this address (or host name)
            ("" = any). DAGonStar's ``ip=`` tasks set it.
        colocate: run on the same agent as this task (which becomes a dependency).
        keep: a declared workflow output: its scratch directory is never garbage-collected.
        checkpoint: the task's output is a checkpoint: kept like ``keep``, and copied to the
            coordinator's checkpoint storage when it succeeds, so consumers (and resumed runs)
            still get it after its agent is gone instead of running the task again.
        device: only an agent that announced this device runs it (e.g. ``serial:/dev/ttyACM0``;
            set by ``Workflow.sensor``/``actuate`` from the source; "" = any).
    """

    name: str
    command: str
    runtime: str = "process"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    after: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    timeout: float | None = None
    retry: Retry = field(default_factory=Retry)
    cpus: float = 1.0
    memory: int = 0
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    agent: str | None = None
    stage_mode: str = ""
    runtime_options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    map_over: str = ""
    arch: str = ""
    host: str = ""
    colocate: str | None = None
    keep: bool = False
    checkpoint: bool = False
    device: str = ""

    def __post_init__(self) -> None:
        # Copies keep callers' dicts from changing a validated task; empties share EMPTY.
        self.kwargs = MappingProxyType(dict(self.kwargs)) if self.kwargs else EMPTY
        self.env = MappingProxyType(dict(self.env)) if self.env else EMPTY
        self.labels = MappingProxyType(dict(self.labels)) if self.labels else EMPTY
        self.runtime_options = MappingProxyType(dict(self.runtime_options)) if self.runtime_options else EMPTY

    def validate(self) -> None:
        check_name("task", self.name)
        if not isinstance(self.command, str) or not self.command.strip():
            raise ValidationError(f"task {self.name!r} has an empty command", tasks=[self.name])
        if not self.runtime:
            raise ValidationError(f"task {self.name!r} has no runtime", tasks=[self.name])
        if self.runtime == "python" and ":" not in self.command:
            raise ValidationError(
                f"task {self.name!r}: python tasks name a callable as 'package.module:function', got {self.command!r}",
                tasks=[self.name],
            )
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValidationError(
                f"task {self.name!r}: timeout must be a positive number of seconds", tasks=[self.name]
            )
        if self.cpus <= 0 or self.memory < 0:
            raise ValidationError(f"task {self.name!r}: cpus must be > 0 and memory >= 0", tasks=[self.name])
        if not isinstance(self.host, str) or any(c.isspace() or c in "/@" for c in self.host):
            raise ValidationError(
                f"task {self.name!r}: host must be an address or host name (no spaces, '/' or '@'), got {self.host!r}",
                tasks=[self.name],
            )
        if self.stage_mode not in _STAGE_MODES:
            raise ValidationError(
                f"task {self.name!r}: stage_mode must be one of symlink, hardlink, copy", tasks=[self.name]
            )
        for pattern in self.outputs:
            check_relative_path(pattern, what="declared output", task=self.name)
        try:
            check_plain(list(self.args), "args")
            check_plain(dict(self.kwargs), "kwargs")
            check_plain(dict(self.runtime_options), "runtime_options")
        except ProtocolError as exc:
            raise ValidationError(
                f"task {self.name!r}: {exc}; task arguments and runtime options travel as plain data",
                tasks=[self.name],
            ) from None
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
                raise ValidationError(f"task {self.name!r}: env {key!r} must map names to strings", tasks=[self.name])

    def references(self) -> list[Reference]:
        refs = find_references(self.command, task=self.name) if self.runtime != "python" else []
        for text in self.inputs:
            found = find_references(text, task=self.name)
            if len(found) != 1 or found[0].text != text:
                raise ValidationError(
                    f"task {self.name!r}: input {text!r} is not a single workflow:// reference", tasks=[self.name]
                )
            refs.extend(found)
        return refs

    def map_reference(self) -> Reference | None:
        """The parsed ``map_over`` reference (None for an ordinary task)."""
        if not self.map_over:
            return None
        found = find_references(self.map_over, task=self.name)
        if len(found) != 1 or found[0].text != self.map_over:
            raise ValidationError(
                f"task {self.name!r}: map_over {self.map_over!r} is not a single workflow:// reference",
                tasks=[self.name],
            )
        return found[0]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "command": self.command, "runtime": self.runtime}
        defaults = _DEFAULT_TASK
        for key in _OPTIONAL_FIELDS:
            value = getattr(self, key)
            if value != getattr(defaults, key):
                if isinstance(value, tuple):
                    value = list(value)
                elif isinstance(value, Mapping):
                    value = dict(value)
                doc[key] = value
        if self.agent is not None:
            doc["agent"] = self.agent
        if self.stage_mode:
            doc["stage_mode"] = self.stage_mode
        if self.map_over:
            doc["map_over"] = self.map_over
        for key in _PLACEMENT_FIELDS:
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.retry != defaults.retry:
            doc["retry"] = {
                "attempts": self.retry.attempts,
                "backoff": self.retry.backoff,
                "max_backoff": self.retry.max_backoff,
            }
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Task:
        if not isinstance(doc, Mapping):
            raise ValidationError(f"a task must be a mapping, got {type(doc).__name__}")
        known = {
            "name", "command", "runtime", "args", "kwargs", "after", "inputs", "outputs", "env",
            "timeout", "cpus", "memory", "labels", "agent", "stage_mode", "retry", "runtime_options",
            "map_over", *_PLACEMENT_FIELDS,
        }  # fmt: skip
        extra = sorted(set(doc) - known)
        if extra:
            raise ValidationError(f"task {doc.get('name')!r}: unknown field(s) {extra}")
        try:
            retry = Retry(**doc["retry"]) if "retry" in doc else Retry()
            task = cls(
                name=doc["name"],
                command=doc["command"],
                runtime=doc.get("runtime", "process"),
                args=tuple(doc.get("args", ())),
                kwargs=dict(doc.get("kwargs", {})),
                after=tuple(doc.get("after", ())),
                inputs=tuple(doc.get("inputs", ())),
                outputs=tuple(doc.get("outputs", ())),
                env=dict(doc.get("env", {})),
                timeout=doc.get("timeout"),
                retry=retry,
                cpus=float(doc.get("cpus", 1.0)),
                memory=int(doc.get("memory", 0)),
                labels=dict(doc.get("labels", {})),
                agent=doc.get("agent"),
                stage_mode=doc.get("stage_mode", ""),
                runtime_options=dict(doc.get("runtime_options", {})),
                map_over=doc.get("map_over", ""),
                arch=doc.get("arch", ""),
                host=doc.get("host", ""),
                colocate=doc.get("colocate"),
                keep=bool(doc.get("keep", False)),
                checkpoint=bool(doc.get("checkpoint", False)),
                device=str(doc.get("device", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"task {doc.get('name')!r}: invalid spec ({exc})") from exc
        return task


_DEFAULT_TASK: Final = Task(name="_", command="_")
# Placement and garbage-collection options, serialised only when set.
_PLACEMENT_FIELDS: Final = ("arch", "host", "colocate", "keep", "checkpoint", "device")
# Serialised only when they differ from the default (agent, stage_mode and retry have their own rules).
_OPTIONAL_FIELDS: Final = (
    "args", "kwargs", "after", "inputs", "outputs", "env", "timeout", "cpus", "memory", "labels", "runtime_options",
)  # fmt: skip


# Task fields wf.container() takes as keywords; every other keyword is a container option.
_CONTAINER_TASK_FIELDS: Final = frozenset(
    {"inputs", "outputs", "env", "timeout", "retry", "cpus", "memory", "labels", "agent", "stage_mode"}
)


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated workflow: dependencies, references and a topological order.

    ``refs`` only has entries for tasks with references: use :meth:`refs_of`.
    ``external`` (only with ``graph(external=True)``) holds, per task, the references
    to *other* workflows' tasks (meta-workflows); they are in ``refs`` too, not in ``deps``.
    """

    deps: dict[str, frozenset[str]]
    refs: dict[str, tuple[Reference, ...]]
    order: tuple[str, ...]
    external: dict[str, tuple[Reference, ...]] = field(default_factory=dict)

    def refs_of(self, task: str) -> tuple[Reference, ...]:
        return self.refs.get(task, ())


def _callable_path(func: Callable[..., Any] | str) -> str:
    if isinstance(func, str):
        return func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValidationError(
            f"{func!r} is not importable by an agent; pass a module-level function of an importable module"
            " or a 'package.module:function' string"
        )
    return f"{module}:{qualname}"


class Workflow:
    """A DAG of tasks.

    Args:
        name: workflow name (used by ``workflow://NAME/...`` references).
    """

    def __init__(self, name: str) -> None:
        check_name("workflow", name)
        self.name = name
        self._tasks: dict[str, Task] = {}

    # -- building ----------------------------------------------------------

    def add(self, task: Task) -> Task:
        if task.name in self._tasks:
            raise ValidationError(f"workflow {self.name!r} already has a task named {task.name!r}", tasks=[task.name])
        task.validate()
        self._tasks[task.name] = task
        return task

    def shell(self, name: str, command: str, *, after: Iterable[str | Task] = (), **options: Any) -> Task:
        """Add a task running ``command`` with bash in its own scratch directory."""
        check_task_options(name, options, exclude=("after",))
        return self.add(Task(name=name, command=command, after=_names(after), **options))

    def python(
        self,
        name: str,
        func: Callable[..., Any] | str,
        *args: Any,
        after: Iterable[str | Task] = (),
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Task:
        """Add a task calling an importable Python function on an agent's worker pool."""
        check_task_options(name, options or {}, exclude=("runtime", "args", "kwargs", "after"))
        return self.add(
            Task(
                name=name,
                command=_callable_path(func),
                runtime="python",
                args=args,
                kwargs=kwargs,
                after=_names(after),
                **(options or {}),
            )
        )

    def container(
        self,
        name: str,
        *,
        image: str,
        command: str,
        runtime: str = "docker",
        after: Iterable[str | Task] = (),
        **options: Any,
    ) -> Task:
        """Add a task running ``command`` (a shell command) inside a container.

        The task's scratch directory is mounted at the same path and is the working
        directory, so ``workflow://`` references work exactly as for ``shell``.

        Args:
            name: the task's name.
            image: the container image (``docker``: a local or pullable image;
                ``apptainer``: ``docker://…`` or a ``.sif`` path; ``charliecloud``: an
                image directory or SquashFS file).
            command: the shell command run inside the container.
            runtime: ``docker``, ``apptainer``, ``charliecloud``, ``kubernetes`` or ``nomad``.
            after: tasks that must succeed first (besides those referenced).
            **options: :class:`Task` fields (``timeout``, ``env``, ``cpus``, ``memory`` —
                the container's limits —, ``retry``, ``labels``, …) and container settings
                for the runtime (e.g. ``devices=[...]``, ``network="none"``,
                ``pull="if-missing"``); a key neither knows raises :class:`ValidationError`.
        """
        fields = {k: options.pop(k) for k in list(options) if k in _CONTAINER_TASK_FIELDS}
        runtime_options = {"image": image, **options}
        check_container_options(name, runtime, runtime_options)
        return self.add(
            Task(
                name=name,
                command=command,
                runtime=runtime,
                after=_names(after),
                runtime_options=runtime_options,
                **fields,
            )
        )

    def http(
        self, name: str, url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None,
        body: Any = None, expect: int | Iterable[int] | None = None, **options: Any,
    ) -> Task:  # fmt: skip
        """Add a task making one HTTP request; the response body becomes its output file.

        ``body``: a ``workflow://`` reference (that file is sent), a string or JSON data; header
        values and the URL may hold ``secret://NAME``; ``expect``: the success statuses (default
        any 2xx). More (``output``, ``retries``, ``backoff``, Task fields): :func:`dagon.core._http.http_task_fields`.
        """
        from dagon.core._http import http_task_fields

        fields = http_task_fields(name, url, method=method, headers=headers, body=body, expect=expect, **options)
        fields["after"] = _names(fields.get("after", ()))
        return self.add(Task(name=name, **fields))

    def sensor(
        self,
        name: str,
        source: str,
        *,
        duration: float,
        every: float | None = None,
        parse: Callable[..., Any] | str | None = None,
        count: int | None = None,
        **options: Any,
    ) -> Task:
        """Add a task recording readings from a device for ``duration`` seconds.

        Readings go to ``readings.jsonl`` in the task's directory (one JSON object per line, for
        ``workflow:///NAME/readings.jsonl`` consumers) and live, as JSON, to the public topic
        ``dagon/v1/runs/{run}/tasks/{task}/readings``. The task runs only on an agent that has the
        device (a placement constraint from the source).

        Args:
            name: the task's name.
            source: ``serial:///dev/ttyACM0?baud=9600``, ``iio:///sys/bus/iio/devices/iio:device0``
                (or ``iio://NAME``), ``i2c://1/0x76?register=0xf7&length=8`` or ``mqtt://TOPIC``.
            duration: seconds to record.
            every: seconds between readings of polled sources (iio, i2c; default 1); for serial
                and mqtt, keep at most one reading per ``every`` seconds (default: all).
            parse: for serial and mqtt, how a line becomes a reading: ``"arduino"`` (the original
                DHT11 sketch), ``"json"``, ``"kv"``, ``"raw"`` or an importable callable
                ``f(line) -> dict | None``; for iio and i2c, a callable ``f(reading) -> dict | None``.
            count: stop after this many readings (before ``duration`` ends).
            **options: ``after``, ``timeout``, ``retry``, ``labels``, ``agent``, ``env``, ``keep``, ``arch``.
        """
        from dagon.core._sensors import sensor_task_fields

        fields = sensor_task_fields(name, source, duration=duration, every=every, parse=parse, count=count, **options)
        fields["after"] = _names(fields.get("after", ()))
        return self.add(Task(name=name, **fields))

    def actuate(self, name: str, target: str, value: str | float, **options: Any) -> Task:
        """Add a task writing ``value`` once to a device (once per attempt, even if redelivered).

        Args:
            name: the task's name.
            target: ``serial:///dev/ttyACM0?baud=9600`` (a line), ``sysfs:///sys/class/leds/led0/brightness``,
                ``i2c://1/0x20?register=0x01`` (a byte, or a string's bytes) or ``mqtt://TOPIC``.
            value: what to write (a string or a number).
            **options: as for :meth:`sensor`.
        """
        from dagon.core._sensors import actuator_task_fields

        fields = actuator_task_fields(name, target, value, **options)
        fields["after"] = _names(fields.get("after", ()))
        return self.add(Task(name=name, **fields))

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    @property
    def tasks(self) -> dict[str, Task]:
        return dict(self._tasks)

    # -- validation --------------------------------------------------------

    def graph(self, *, external: bool = False) -> Graph:
        """Validate and return the dependency graph; raises ValidationError.

        Args:
            external: accept references to other workflows' tasks (a coordinator
                resolves them against the runs it holds); by default they are an error.
        """
        if not self._tasks:
            raise ValidationError(f"workflow {self.name!r} has no tasks")
        deps: dict[str, frozenset[str]] = {}
        shared: dict[frozenset[str], frozenset[str]] = {}  # identical dependency sets share one object
        refs: dict[str, tuple[Reference, ...]] = {}
        outside: dict[str, tuple[Reference, ...]] = {}
        tasks = self._tasks
        for name, task in tasks.items():
            found = task.references()
            needed = set(task.after)
            mapped = task.map_reference() if task.map_over else None
            if mapped is not None:
                if mapped.workflow not in ("", self.name):
                    raise ValidationError(
                        f"task {name!r}: map_over must name a task of this workflow, got {mapped.text}", tasks=[name]
                    )
                needed.add(mapped.task)
            if task.colocate:
                needed.add(task.colocate)  # "same agent as X" needs X placed (and done) first
            for ref in found:
                if ref.workflow not in ("", self.name):
                    if external:
                        outside[name] = (*outside.get(name, ()), ref)
                        continue
                    raise ValidationError(
                        f"task {name!r} references workflow {ref.workflow!r} ({ref.text}); only this workflow"
                        f" ({self.name!r}) is known to it — submit both to one coordinator (e.g. as a"
                        " dagon.MetaWorkflow)",
                        tasks=[name],
                    )
                needed.add(ref.task)
            unknown = sorted(n for n in needed if n not in tasks)
            if unknown:
                raise ValidationError(
                    f"task {name!r} depends on unknown task(s) {unknown} of workflow {self.name!r}",
                    tasks=[name, *unknown],
                )
            if name in needed:
                raise ValidationError(f"task {name!r} depends on itself", tasks=[name])
            dep_set = frozenset(needed)
            deps[name] = shared.setdefault(dep_set, dep_set)
            if found:  # sparse: most tasks of big fan-outs reference nothing
                refs[name] = tuple(found)
        return Graph(deps=deps, refs=refs, order=_topological(deps), external=outside)

    # -- serialisation -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "name": self.name, "tasks": [t.to_dict() for t in self._tasks.values()]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Workflow:
        if not isinstance(doc, Mapping) or doc.get("version") != SPEC_VERSION:
            raise ValidationError(f"not a dagon workflow spec of version {SPEC_VERSION}")
        wf = cls(doc.get("name", ""))
        tasks = doc.get("tasks")
        if not isinstance(tasks, list):
            raise ValidationError("workflow spec: 'tasks' must be a list")
        for item in tasks:
            wf.add(Task.from_dict(item))
        return wf


def _names(items: Iterable[str | Task]) -> tuple[str, ...]:
    return tuple(item.name if isinstance(item, Task) else item for item in items)


def _topological(deps: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
    """Kahn's algorithm; on a cycle, raise naming the cycle's tasks in order."""
    waiting = {name: len(d) for name, d in deps.items()}
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    for name, d in deps.items():
        for dep in d:
            dependents[dep].append(name)
    ready = [name for name, n in waiting.items() if n == 0]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for child in dependents[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) != len(deps):
        cycle = _find_cycle({n: d for n, d in deps.items() if waiting[n] > 0})
        raise ValidationError(f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}", tasks=cycle)
    return tuple(order)


def _find_cycle(deps: Mapping[str, frozenset[str]]) -> list[str]:
    # Every remaining node has a remaining dependency, so following any chain of
    # them must revisit a node; the revisited stretch is a cycle.
    start = min(deps)
    seen: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(d for d in deps[node] if d in deps)
    cycle = path[seen[node] :]
    cycle.reverse()  # report in execution order: producer -> consumer
    return cycle
