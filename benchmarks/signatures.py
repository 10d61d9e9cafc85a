"""What signing and verifying a message costs, on libsodium (PyNaCl) against OpenSSL (cryptography).

Every message dagon sends is signed and every one it receives verified (docs/security.md). This
encodes and decodes, through the real ``Codec``, the messages a task and a heartbeat make — an
assignment, a report, a heartbeat carrying its telemetry sample — once with each library, in
separate processes (``DAGON_ED25519`` picks the library at import), and prints µs per message.

    python benchmarks/signatures.py [--messages 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import print_table

PROBE = r"""
import json, sys, time
from dagon.protocol import (AgentId, AssignTasks, Codec, Heartbeat, KeyRing, ResultStatus, RunId, Signer,
    TaskAssignment, TaskName, TaskResult, TasksFinished, Telemetry)
from dagon.protocol._ed25519 import BACKEND

n = int(sys.argv[1])
agent, coordinator = Signer.generate(), Signer.generate()
to_agent = Codec(sender="coordinator/main", signer=coordinator)
at_agent = Codec(sender="agent/a", trust=KeyRing([coordinator.public_key]), recipient="agent/a")
from_agent = Codec(sender="agent/a", signer=agent)
at_coordinator = Codec(sender="coordinator/main", trust=KeyRing([agent.public_key]))
task = TaskAssignment(run=RunId("r"), workflow="w", task=TaskName("t"), attempt=1, runtime="python",
                      command="dagon.agent.builtins:noop")
assign = AssignTasks(reply_to="coordinator/main", tasks=(task,))
result = TaskResult(RunId("r"), TaskName("t"), 1, ResultStatus.SUCCEEDED, 0, 1.0, 2.0, workdir="/scratch/r/t-1")
report = TasksFinished(agent=AgentId("a"), results=(result,))
sample = Telemetry(agent=AgentId("a"), sampled_at=1.0, cpu_percent=3.0, memory_used=1, memory_total=2,
                   per_core_percent=(3.0, 3.0), load_avg=(0.1, 0.1, 0.1), power_watts=4.2, power_source="model")
beat = Heartbeat(agent=AgentId("a"), seq=1, running=0, free_slots=1, session="s", telemetry=sample)
out = {"backend": BACKEND}
for name, message, send, receive, to in [("assignment", assign, to_agent, at_agent, "agent/a"),
                                         ("report", report, from_agent, at_coordinator, ""),
                                         ("heartbeat + telemetry", beat, from_agent, at_coordinator, "")]:
    payloads = [send.encode(message, to=to) for _ in range(n)]  # warm-up
    start = time.process_time()
    payloads = [send.encode(message, to=to) for _ in range(n)]  # distinct ids: the replay guard takes each
    encode = (time.process_time() - start) / n
    start = time.process_time()
    for p in payloads:
        receive.decode(p)
    decode = (time.process_time() - start) / n
    out[name] = [encode * 1e6, decode * 1e6]
print(json.dumps(out))
"""


def measure(library: str, messages: int) -> dict[str, object]:
    env = dict(os.environ, DAGON_ED25519=library)
    out = subprocess.run([sys.executable, "-c", PROBE, str(messages)], env=env, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {library or 'default'} probe failed (exit {out.returncode}; its error above)")
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    openssl = measure("openssl", args.messages)  # the baseline, in the same run
    default = measure("", args.messages)
    rows: list[list[object]] = []
    for name in ("assignment", "report", "heartbeat + telemetry"):
        base, now = openssl[name], default[name]
        assert isinstance(base, list) and isinstance(now, list)
        rows.append([name, f"{base[0]:.0f} / {base[1]:.0f}", f"{now[0]:.0f} / {now[1]:.0f}",
                     f"{(base[0] + base[1]) / (now[0] + now[1]):.2f}x"])  # fmt: skip
    print_table(
        f"µs of CPU to encode (sign) / decode (verify) one message, {args.messages} of each",
        ["message", "OpenSSL (cryptography)", f"default here: {default['backend']}", "speed-up"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
