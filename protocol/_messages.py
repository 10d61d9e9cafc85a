"""Typed wire messages, grouped by direction.

Every message is a frozen, slotted dataclass with a class-level ``OP`` naming it
on the wire. Dicts exist only inside the codec (:mod:`dagon.protocol._codec`).

Directions:
    * ``ToAgent`` — coordinator → agent (``…/agents/{agent}/tasks`` and ``…/control``).
    * ``FromAgent`` — agent → coordinator (status, telemetry, coordinator inbox).
    * ``ToCoordinator`` — client → coordinator inbox (submit / cancel a run).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, NewType

__all__ = [
    "Ack",
    "AgentId",
    "Announce",
    "Answer",
    "AssignTasks",
    "CancelRun",
    "CancelTasks",
    "Capabilities",
    "Control",
    "DeleteData",
    "FromAgent",
    "FromCoordinator",
    "Heartbeat",
    "LogsRequest",
    "Message",
    "Offline",
    "OutputFile",
    "Rejection",
    "ResultStatus",
    "ResultsStored",
    "ResumeRun",
    "RevokeGrants",
    "RunId",
    "StageInput",
    "StartedTask",
    "SubmitRun",
    "TaskAssignment",
    "TaskName",
    "TaskProgress",
    "TaskRef",
    "TaskResult",
    "TasksFinished",
    "TasksStarted",
    "Telemetry",
    "TimeAnswer",
    "TimeQuery",
    "ToAgent",
    "ToCoordinator",
    "UploadOutputs",
]

RunId = NewType("RunId", str)
TaskName = NewType("TaskName", str)
AgentId = NewType("AgentId", str)


class ResultStatus(enum.StrEnum):
    """How an attempt ended, as the agent saw it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the command ran and exited non-zero
    TIMEOUT = "timeout"  # killed by the agent after the task's timeout
    CANCELLED = "cancelled"  # killed on request
    ERROR = "error"  # dagon could not run it (staging, bad runtime, …); see ``error``


# ---------------------------------------------------------------------------
# shared structs


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Names one attempt of one task of one run."""

    run: RunId
    task: TaskName
    attempt: int


@dataclass(frozen=True, slots=True)
class StageInput:
    """A ``workflow://`` reference the agent must stage before running the task.

    Attributes:
        ref: the exact reference text as it appears in the command.
        workflow: producing workflow name.
        task: producing task name.
        path: path (maybe a glob) relative to the producer's working directory.
        source_agent: agent that ran the producer.
        source_host: host id of that agent (same host means link/copy works).
        source_dir: the producer's absolute working directory on that host.
        source_run, source_attempt: the producer's run and attempt (its directory's name).
        url: the data server to pull from when the producer is on another host.
        token: the grant for that pull (see :mod:`dagon.protocol._grants`).
        relay: ``url`` is the coordinator's relay, where the producer uploads on request
            (the consumer waits for the upload to complete).
        verify: the coordinator did not see the producer succeed in its lifetime (a
            resumed run): check local files against the producer's sha256 manifest.
    """

    ref: str
    workflow: str
    task: TaskName
    path: str
    source_agent: AgentId
    source_host: str
    source_dir: str
    source_run: str = ""
    source_attempt: int = 0
    url: str = ""
    token: str = ""
    relay: bool = False
    verify: bool = False  # check local files against the producer's sha256 manifest (a resumed run)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of a task's output manifest (path relative to its workdir)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TaskAssignment:
    """Everything an agent needs to run one attempt of a task."""

    run: RunId
    workflow: str
    task: TaskName
    attempt: int
    runtime: str
    command: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    inputs: tuple[StageInput, ...] = ()
    outputs: tuple[str, ...] = ()
    stage_mode: str = ""
    cpus: float = 1.0
    memory: int = 0  # bytes; 0 = no limit requested
    runtime_options: dict[str, Any] = field(default_factory=dict)  # runtime-specific, plain data

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.run, self.task, self.attempt)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an agent is and can do; published retained on its status topic."""

    hostname: str
    host_id: str
    arch: str
    os: str
    cpus: int
    memory: int
    runtimes: tuple[str, ...]
    labels: dict[str, str]
    slots: int
    version: str
    prefetch: int = 0  # assignments the agent queues beyond its slots (hides dispatch latency)
    data_url: str = ""  # where its data server serves task outputs ("" = none)
    reachable: bool = True  # False: others cannot connect to it (NAT); its outputs go through the relay
    ssh_url: str = ""  # ssh://user@host:port where its scratch root can be read over SFTP ("" = no)
    checkpoint_store: bool = False  # its data server keeps copies of checkpoint tasks' outputs
    addresses: tuple[str, ...] = ()  # this host's addresses (interfaces and --addresses), for tasks with a host
    devices: tuple[str, ...] = ()  # sensors and buses it can read, e.g. "serial:/dev/ttyACM0", "i2c:1"


@dataclass(frozen=True, slots=True)
class StartedTask:
    run: RunId
    task: TaskName
    attempt: int
    started_at: float
    workdir: str


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one attempt ended, with its measurements and output manifest (agent → coordinator,
    carried by :class:`TasksFinished`; the coordinator's user sees a ``core.TaskOutcome``)."""

    run: RunId
    task: TaskName
    attempt: int
    status: ResultStatus
    exit_code: int | None
    started_at: float
    finished_at: float
    cpu_time: float = 0.0
    max_rss: int = 0
    stderr_tail: str = ""
    error: str = ""
    workdir: str = ""
    outputs: tuple[OutputFile, ...] = ()
    value: Any = None
    staging: str = ""  # how inputs were staged, e.g. "pulled 2 file(s), 1.0 GiB in 1.2 s (870 MB/s) over http"
    energy_joules: float = 0.0  # attributed to this attempt (see dagon.agent.power); 0 when unknown
    power_watts: float = 0.0  # average over the attempt
    energy_measured: bool = False  # False: modelled (or unknown)
    energy_source: str = ""  # power source(s) the figure came from; "" when unknown
    # Producer tasks (of the same run) whose outputs this attempt could not stage because they
    # were missing or failed their sha256 check: the coordinator regenerates them.
    lost_inputs: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True, slots=True)
class Rejection:
    task: TaskRef
    reason: str
    permanent: bool = False


# ---------------------------------------------------------------------------
# messages


class Message:
    """Marker base; every concrete message has a class attribute ``OP``."""

    __slots__ = ()
    OP: ClassVar[str]


@dataclass(frozen=True, slots=True)
class AssignTasks(Message):
    """Run these tasks (several per message). Replies go to ``reply_to``'s inbox."""

    OP: ClassVar[str] = "assign"
    reply_to: str
    tasks: tuple[TaskAssignment, ...]
    # Results now persisted by the coordinator (as in ResultsStored), riding along with the
    # assignment that usually follows them instead of costing a signed message of their own.
    stored: tuple[TaskRef, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelTasks(Message):
    OP: ClassVar[str] = "cancel"
    tasks: tuple[TaskRef, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Control(Message):
    """Out-of-band agent control: ``"shutdown"`` or ``"announce"`` (re-publish status; with
    ``args={"challenge": NONCE}`` the announce answers it, see ``Announce.answer``)."""

    OP: ClassVar[str] = "control"
    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UploadOutputs(Message):
    """Push ``path`` of one attempt's output to the coordinator's relay (for an unreachable producer).

    The agent PUTs each covered file to ``url`` with ``token`` (a ``write`` grant),
    then the producer's manifest of them last, which marks the upload complete.
    """

    OP: ClassVar[str] = "upload"
    run: RunId
    task: TaskName
    attempt: int
    path: str
    url: str
    token: str


@dataclass(frozen=True, slots=True)
class DeleteData(Message):
    """Delete these attempts' task directories and these runs' directories from the scratch root.

    ``tasks``: outputs no consumer needs any more (garbage collection);
    ``runs``: whole runs that are finished (``dagon gc``).
    """

    OP: ClassVar[str] = "delete"
    tasks: tuple[TaskRef, ...] = ()
    runs: tuple[RunId, ...] = ()


@dataclass(frozen=True, slots=True)
class RevokeGrants(Message):
    """These consumer attempts ended: refuse every data grant minted for them (see
    ``dagon.protocol.Grant.consumer``) until ``until``, when all of them have expired anyway."""

    OP: ClassVar[str] = "revoke"
    attempts: tuple[TaskRef, ...]
    until: float


@dataclass(frozen=True, slots=True)
class ResultsStored(Message):
    """The coordinator has persisted these attempts' results: the agent may drop them from its spool.

    Sent for every result received, current or stale, once it is in the run store (or
    judged stale), so an agent never holds a result forever.
    """

    OP: ClassVar[str] = "stored"
    tasks: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Announce(Message):
    OP: ClassVar[str] = "announce"
    agent: AgentId
    capabilities: Capabilities
    key: bytes = b""  # the agent's raw Ed25519 public key, which signs everything it reports
    session: str = ""  # random, new at every agent start: reports of another session are stale
    # The nonce of the coordinator's question this announce answers (Control "announce" with
    # args {"challenge": nonce}); only an answering announce makes the agent online.
    answer: str = ""


@dataclass(frozen=True, slots=True)
class Offline(Message):
    """Last Will (and clean shutdown) of an agent, retained on its status topic."""

    OP: ClassVar[str] = "offline"
    agent: AgentId
    reason: str = ""
    session: str = ""  # the session that ended (see Announce.session)


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    OP: ClassVar[str] = "heartbeat"
    agent: AgentId
    seq: int
    running: int
    free_slots: int
    # Attempts the agent holds: queued, running, or finished with a result the coordinator
    # has not acknowledged yet (see ResultsStored). A coordinator that restarted re-attaches
    # to these; an active attempt missing here (past a grace period) was lost and is requeued.
    held: tuple[TaskRef, ...] = ()
    complete: bool = False  # True: ``held`` lists every attempt held (the agent spools its results)
    session: str = ""  # see Announce.session; ``seq`` counts up within it
    # The agent's telemetry sample taken since its previous heartbeat, if any: it rides here rather
    # than in a message of its own, which halves what a fleet sends its coordinators (issue 21).
    telemetry: Telemetry | None = None


@dataclass(frozen=True, slots=True)
class TasksStarted(Message):
    OP: ClassVar[str] = "started"
    agent: AgentId
    tasks: tuple[StartedTask, ...]


@dataclass(frozen=True, slots=True)
class TasksFinished(Message):
    """An agent reports attempts that ended: a batch of :class:`TaskResult` (one per attempt)."""

    OP: ClassVar[str] = "finished"
    agent: AgentId
    results: tuple[TaskResult, ...]


@dataclass(frozen=True, slots=True)
class TaskProgress(Message):
    """What a long step of one attempt is doing (e.g. staging: bytes so far, rate); informational."""

    OP: ClassVar[str] = "progress"
    agent: AgentId
    run: RunId
    task: TaskName
    attempt: int
    note: str


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Sent for an assignment message only when some of its tasks were refused."""

    OP: ClassVar[str] = "ack"
    agent: AgentId
    accepted: int
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class SubmitRun(Message):
    """Ask a coordinator to run a workflow (its spec as produced by ``Workflow.to_dict``)."""

    OP: ClassVar[str] = "submit"
    run: RunId
    workflow: dict[str, Any]
    keep_scratch: bool = False  # garbage-collect nothing of this run
    reply_to: str = ""  # the client's reply id: the coordinator answers on topics.client_answers(reply_to)


@dataclass(frozen=True, slots=True)
class CancelRun(Message):
    OP: ClassVar[str] = "cancel_run"
    run: RunId
    reason: str = ""
    reply_to: str = ""  # see SubmitRun.reply_to


@dataclass(frozen=True, slots=True)
class Telemetry(Message):
    """One telemetry sample of an agent's node (on ``…/agents/{agent}/telemetry``, next to heartbeats).

    Rates are per second over the time since the agent's previous sample. ``power_watts`` is
    ``None`` when the agent has no power source; ``power_measured`` says whether the figure
    came from a sensor (``True``) or a CPU-utilisation model (``False``).
    """

    OP: ClassVar[str] = "telemetry"
    agent: AgentId
    sampled_at: float  # when the sample was taken (the envelope's own ``ts`` is when it was sent)
    cpu_percent: float
    memory_used: int
    memory_total: int
    running: int = 0
    per_core_percent: tuple[float, ...] = ()
    load_avg: tuple[float, ...] = ()
    disk_read_bps: float = 0.0
    disk_write_bps: float = 0.0
    net_recv_bps: float = 0.0
    net_sent_bps: float = 0.0
    temperatures: dict[str, float] = field(default_factory=dict)
    power_watts: float | None = None
    power_source: str = ""
    power_measured: bool = False
    energy_joules_total: float = 0.0  # the agent's node energy since it started


@dataclass(frozen=True, slots=True)
class TimeQuery(Message):
    """An agent (or ``dagon-agent doctor`` with its key) asks a coordinator for its clock.

    Sent to the coordinator's inbox, signed by the agent; answered with a :class:`TimeAnswer` on
    the agent's control topic. ``nonce`` (random, at least 16 characters) makes the answer fresh
    whatever the two clocks say, so it is not subject to the freshness window.
    """

    OP: ClassVar[str] = "time_query"
    agent: AgentId
    nonce: str


@dataclass(frozen=True, slots=True)
class TimeAnswer(Message):
    """A coordinator's clock for one :class:`TimeQuery` (NTP-style: with the querier's send and
    receive times, the offset between the clocks and the round trip follow). Signed; it makes
    nobody act, so it is not subject to the freshness window (a clock far off must be measurable)."""

    OP: ClassVar[str] = "time_answer"
    nonce: str
    received: float  # the coordinator's clock when the query arrived
    sent: float  # ... and when the answer left


ToAgent = AssignTasks | CancelTasks | Control | UploadOutputs | DeleteData | ResultsStored | RevokeGrants | TimeAnswer
FromAgent = Announce | Offline | Heartbeat | TasksStarted | TasksFinished | Ack | TaskProgress | Telemetry | TimeQuery


@dataclass(frozen=True, slots=True)
class ResumeRun(Message):
    """Run again what did not succeed in a run of the coordinator's store (``dagon resume``)."""

    OP: ClassVar[str] = "resume"
    run: RunId
    reply_to: str = ""  # see SubmitRun.reply_to


@dataclass(frozen=True, slots=True)
class LogsRequest(Message):
    """Ask for a data-plane grant to read one task attempt's ``stdout``/``stderr`` from its agent
    (``dagon logs`` from a client machine). The coordinator answers with an :class:`Answer`
    carrying the agent's data URL and a ``logs`` grant whose holder is the key that signed this
    request: the client binds it with that key (``bind_grant``), so a captured answer is useless
    to anyone else."""

    OP: ClassVar[str] = "logs"
    run: RunId
    task: str
    attempt: int  # >= 1
    stream: str  # "stdout" or "stderr"
    reply_to: str = ""  # see SubmitRun.reply_to


ToCoordinator = SubmitRun | CancelRun | ResumeRun | LogsRequest


@dataclass(frozen=True, slots=True)
class Answer(Message):
    """A coordinator's answer to a client's request (``SubmitRun``, ``CancelRun``, ``ResumeRun``, ``LogsRequest``)
    that named a ``reply_to``, published on ``topics.client_answers(reply_to)``.

    Signed with the coordinator key, which the client pins; it answers once a run it accepts is
    in its store, so ``accepted`` means the run survives a coordinator restart. A request signed
    by a key the coordinator does not trust is answered too (``code="untrusted"``), naming the
    key id it was signed with: a client ignores such an answer for a key that is not its own
    (anyone may publish a copy of its request with another signature).
    """

    OP: ClassVar[str] = "answer"
    request: str  # the envelope id of the request answered
    request_op: str  # the request's op ("submit", "cancel_run", "resume"); "op" names the envelope's own
    run: RunId
    accepted: bool
    reason: str = ""  # why not; or what was done ("cancelling", "already running")
    code: str = ""  # "" when accepted, else "untrusted", "unsigned", "expired", "invalid", "unknown_run", "ended"
    key: str = ""  # the key id the request was signed with, as the coordinator saw it
    url: str = ""  # LogsRequest: the data server URL of the agent holding the log
    token: str = ""  # LogsRequest: the ``logs`` grant for it, held by the requesting key (bind before use)


FromCoordinator = Answer
