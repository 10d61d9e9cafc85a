"""Staging: one large file from one agent to another through the data server (HTTP, sha256-checked
on arrival), against `scp` over loopback (OpenSSH, a private sshd) and a local `cp`, in the same run.

    python benchmarks/staging.py [--size-mib 1024]

Targets (issue #3): >= 2x scp throughput and >= 60 % of local cp throughput.
Everything binds to 127.0.0.1; the private sshd uses its own host key, authorized-keys file and
known_hosts in the workspace (nothing under ~/.ssh is read or written) and is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, free_port, mosquitto, print_table, workspace

import dagon
from dagon.protocol import Grant, Signer, mint_grant, read_grant
from dagon.protocol.transport import MANIFEST_FILE, DataServer, pull

SCP_FACTOR_TARGET = 2.0
CP_SHARE_TARGET = 0.60


def make_file(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as out:
        for _ in range(mib):
            out.write(block)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.access(p, os.X_OK)), None)


def scp_seconds(src: Path, work: Path) -> float | None:
    sshd = sshd_binary()
    if sshd is None or shutil.which("scp") is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "client")], check=True)
    shutil.copy(work / "client.pub", work / "authorized_keys")
    os.chmod(work / "authorized_keys", 0o600)
    port = free_port()
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {work / 'host'}\nUsePAM no\nPasswordAuthentication no\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPidFile {work / 'sshd.pid'}\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    host_key = (work / "host.pub").read_text().split()
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(work / "sshd_config")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ssh", "-p", str(port), "-i", str(work / "client"), "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "127.0.0.1", "true"],
                capture_output=True, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        known = f"UserKnownHostsFile={work / 'known_hosts'}"
        return timed(
            ["scp", "-q", "-P", str(port), "-i", str(work / "client"), "-o", known, "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", str(src), f"127.0.0.1:{work / 'scp-copy'}"]
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait()


def producer_dir(src: Path, root: Path) -> None:
    """``root/r/A-1/big.bin`` (a hard link to ``src``) with the producer's manifest, as an agent leaves it."""
    task = root / "r" / "A-1"
    (task / ".dagon").mkdir(parents=True)
    os.link(src, task / "big.bin")
    digest = hashlib.sha256()
    with src.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    entry = {"path": "big.bin", "size": src.stat().st_size, "sha256": digest.hexdigest()}
    (task / ".dagon" / MANIFEST_FILE).write_text(json.dumps([entry]))


async def data_path_seconds(root: Path) -> float:
    """The data plane alone: one process, loopback, the producer's manifest already written."""
    signer = Signer.generate()
    keys = {signer.key_id: signer.public_key}
    async with DataServer(authorize=lambda t: read_grant(t, keys), locate=lambda g: root / "r" / "A-1") as server:
        token = mint_grant(signer, Grant("r", "A", 1, "big.bin", "bench", "read", time.time() + 600))
        start = time.perf_counter()
        await pull(server.url, token, root / "pulled")
        return time.perf_counter() - start


async def dagon_seconds(url: str, agents: list[str], mib: int) -> tuple[float, str]:
    wf = dagon.Workflow("bench-staging")
    # sync: every method starts from a file already on disk (no writeback competing with the copy)
    wf.shell("produce", f"head -c {mib}M /dev/urandom > big.bin && sync big.bin", agent=agents[0])
    wf.shell("consume", "test -s workflow:///produce/big.bin", agent=agents[1])
    async with dagon.connect(url) as client:
        assert client.coordinator is not None
        async with asyncio.timeout(30):
            await client.coordinator.wait_for_agents(2)
        result = await (await client.submit(wf)).wait()
    if not result.ok:
        raise SystemExit(f"staging run failed: {result.cause}")
    cause = result["consume"].cause
    match = re.search(r"pulled 1 file\(s\), .* in ([0-9.]+) s", cause)
    if match is None:
        raise SystemExit(f"no pull measured: {cause}")
    return float(match.group(1)), cause


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    mib = args.size_mib
    with workspace() as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        make_file(src, mib)
        subprocess.run(["sync", str(src)], check=True)
        # Each method starts with no dirty pages left by the previous one (this VM's disk is the limit).
        cp_s = timed(["cp", str(src), str(root / "cp-copy")])
        (root / "cp-copy").unlink()
        os.sync()
        scp_s = scp_seconds(src, root / "ssh")
        shutil.rmtree(root / "ssh", ignore_errors=True)
        producer_dir(src, root / "data-path")
        os.sync()
        path_s = asyncio.run(data_path_seconds(root / "data-path"))
        shutil.rmtree(root / "data-path")
        os.sync()
        with mosquitto() as url, Agents(url, 2, slots=2, root=root / "agents", separate_hosts=True) as agents:
            dagon_s, note = asyncio.run(dagon_seconds(url, agents.ids, mib))
    rate = mib / dagon_s
    rows: list[list[object]] = [["dagon data server (HTTP, sha256 verified)", f"{dagon_s:.2f}", f"{rate:,.0f}", ""]]
    if scp_s is not None:
        rows.append(["scp over loopback (OpenSSH)", f"{scp_s:.2f}", f"{mib / scp_s:,.0f}", "same run"])
    rows.append(["local cp (same file system)", f"{cp_s:.2f}", f"{mib / cp_s:,.0f}", "same run"])
    rows.append(["data path alone (one process, loopback)", f"{path_s:.2f}", f"{mib / path_s:,.0f}", "same run"])
    print_table(f"staging {mib} MiB between two agents", ["method", "seconds", "MiB/s", ""], rows)
    verdicts = []
    if scp_s is not None:
        factor = scp_s / dagon_s
        verdicts.append(f"{factor:.2f}x scp (target >= {SCP_FACTOR_TARGET:.0f}x)")
    share = cp_s / dagon_s
    verdicts.append(f"{share:.0%} of cp (target >= {CP_SHARE_TARGET:.0%})")
    print("\n  " + "; ".join(verdicts) + f"\n  consumer's report: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
