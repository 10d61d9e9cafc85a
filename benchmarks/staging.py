"""Staging: one large file from one agent to another through the data server (HTTP, sha256-checked
on arrival), against `scp` over loopback (OpenSSH, a private sshd) and a local `cp`, in the same run;
and on one host: the consumer's own copy (a reflink where the file system has them) against the hard
link staging used to make (which let a consumer change its producer's file).

    python benchmarks/staging.py [--size-mib 1024] [--rounds 3] [--cold] [--local-only]

Targets: >= 2x scp throughput and >= 60 % of local cp throughput (issue #3); >= 1.5x scp (issue 21).

Memory is warmed before every method: each writes a GiB into pages the guest just touched. On a VM
whose balloon driver reports free pages to the host (virtio_balloon free page reporting, as on the
benchmark VM), a page freed for a few seconds goes back to the host and the next write to it faults
it in again — touching 3 GiB of fresh memory took 6.6 s there (~450 MiB/s), and a 1 GiB pull ran at
235-318 MiB/s into such pages against 700-825 into warm ones, in dagon and in a plain two-process
pull alike (docs/benchmarks.md). Which method ran after a big delete decided its figure; ``--cold``
skips the warming to see it.
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
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _harness import Agents, add_broker_arguments, free_port, mosquitto, print_table, workspace

import dagon
from dagon.protocol import Grant, Signer, mint_grant, read_grant
from dagon.protocol.transport import MANIFEST_FILE, DataServer, pull

# Touch (then free) this much memory, a byte per page: the method that follows writes into pages the
# guest has rather than ones its balloon driver gave back to the host (see the module docstring).
WARM = "b = bytearray({mib} << 20); b[::4096] = bytes(len(b) >> 12)"

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


def local_rows(src: Path, root: Path) -> list[list[object]]:
    """Same-host staging of ``src``: the old hard link, the consumer's own copy on this file system,
    and (as root, with mkfs.xfs) the same on a loop-mounted XFS with reflinks."""
    from dagon.agent._staging import clone_or_copy

    mib = src.stat().st_size >> 20
    start = time.perf_counter()
    os.link(src, root / "linked.bin")
    link_s = time.perf_counter() - start
    start = time.perf_counter()
    cloned = clone_or_copy(src, root / "own.bin")
    own_s = time.perf_counter() - start
    os.sync()
    rows: list[list[object]] = [
        ["same host, before: hard link (consumer could write the producer's file)", f"{link_s:.4f}", "", ""],
        [f"same host, now: own file ({'reflink' if cloned else 'copy'}, this file system)", f"{own_s:.4f}",
         f"{mib / own_s:,.0f}", f"{own_s / link_s:,.0f}x the link"],
    ]  # fmt: skip
    mkfs = shutil.which("mkfs.xfs") or "/usr/sbin/mkfs.xfs"
    if os.geteuid() == 0 and os.access(mkfs, os.X_OK):
        image, mount = root / "xfs.img", root / "xfs"
        with image.open("wb") as f:
            f.truncate(max(512, 2 * mib + 64) << 20)
        subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], check=True)
        mount.mkdir()
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            shutil.copyfile(src, mount / "produced.bin")
            os.sync()
            start = time.perf_counter()
            cloned = clone_or_copy(mount / "produced.bin", mount / "own.bin")
            xfs_s = time.perf_counter() - start
        finally:
            subprocess.run(["umount", str(mount)], check=True)
        rows.append([f"same host, now: own file ({'reflink' if cloned else 'copy'}, XFS loop mount)",
                     f"{xfs_s:.4f}", f"{mib / xfs_s:,.0f}", f"{xfs_s / link_s:,.1f}x the link"])  # fmt: skip
    return rows


async def data_path_seconds(root: Path) -> float:
    """The data plane alone: one process, loopback, the producer's manifest already written."""
    signer = Signer.generate()
    keys = {signer.key_id: signer.public_key}
    async with DataServer(authorize=lambda t: read_grant(t, keys), locate=lambda g: root / "r" / "A-1") as server:
        token = mint_grant(signer, Grant("r", "A", 1, "big.bin", "bench", "read", time.time() + 600))
        start = time.perf_counter()
        await pull(server.url, token, root / "pulled")
        return time.perf_counter() - start


async def dagon_seconds(url: str, agents: list[str], mib: int, warm: bool = True) -> tuple[float, str, str]:
    wf = dagon.Workflow("bench-staging")
    # sync: every method starts from a file already on disk (no writeback competing with the copy);
    # warm: and writes into memory the guest has (see the module docstring) — the producer's last act.
    # fincore (to stderr: its tail comes back with the result) says how much is in the page cache for the pull.
    cached = "fincore --bytes --noheadings --output RES,SIZE big.bin >&2" if shutil.which("fincore") else "true"
    touch = f"{shlex.quote(sys.executable)} -c {shlex.quote(WARM.format(mib=2 * mib))}" if warm else "true"
    make = f"head -c {mib}M /dev/urandom > big.bin && sync big.bin && {touch} && {cached}"
    wf.shell("produce", make, agent=agents[0])
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
    fields = result["produce"].stderr_tail.split()
    cached = f"{100 * int(fields[0]) / int(fields[1]):.0f} %" if len(fields) == 2 and int(fields[1]) else "unknown"
    return float(match.group(1)), cause, cached


def in_page_cache(path: Path) -> str:
    """How much of ``path`` is in the page cache (util-linux ``fincore``), e.g. ``"100 %"``."""
    if shutil.which("fincore") is None:
        return "unknown (no fincore)"
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)], capture_output=True, text=True
    )
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 2 or not int(fields[1]):
        return f"unknown ({out.stderr.strip() or out.stdout.strip()})"
    return f"{100 * int(fields[0]) / int(fields[1]):.0f} %"


def one_round(
    order: list[str], src: Path, root: Path, url: str, agents: list[str], mib: int, warm: bool
) -> dict[str, Any]:
    """Every method once, in ``order``; each starts with no dirty pages left by the one before."""
    seconds: dict[str, float | None] = {}
    cached: dict[str, str] = {}
    note = ""
    for method in order:
        os.sync()
        if warm and method != "dagon":  # dagon's producer warms it as the last step of its task
            subprocess.run([sys.executable, "-c", WARM.format(mib=2 * mib)], check=True)
        if method == "cp":
            cached["cp"] = in_page_cache(src)
            seconds["cp"] = timed(["cp", str(src), str(root / "cp-copy")])
            (root / "cp-copy").unlink()
        elif method == "scp":
            cached["scp"] = in_page_cache(src)
            seconds["scp"] = scp_seconds(src, root / "ssh")
            shutil.rmtree(root / "ssh", ignore_errors=True)
        elif method == "path":
            producer_dir(src, root / "data-path")
            os.sync()
            cached["path"] = in_page_cache(next((root / "data-path").rglob("big.bin")))
            seconds["path"] = asyncio.run(data_path_seconds(root / "data-path"))
            shutil.rmtree(root / "data-path")
        else:
            seconds["dagon"], note, cached["dagon"] = asyncio.run(dagon_seconds(url, agents, mib, warm))
    return {"seconds": seconds, "cached": cached, "note": note, "order": order}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every method, interleaved (medians shown)")
    parser.add_argument("--local-only", action="store_true", help="only the same-host rows")
    parser.add_argument("--cold", action="store_true", help="do not warm memory before each method")
    add_broker_arguments(parser)
    args = parser.parse_args()
    mib = args.size_mib
    with workspace() as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        make_file(src, mib)
        subprocess.run(["sync", str(src)], check=True)
        (root / "local-work").mkdir()
        local = local_rows(src, root / "local-work")
        if args.local_only:
            print_table(f"staging {mib} MiB on one host", ["method", "seconds", "MiB/s", ""], local)
            return 0
        rounds = []
        with (
            mosquitto(tuned=args.tuned_broker) as url,
            Agents(url, 2, slots=2, root=root / "agents", separate_hosts=True) as agents,
        ):
            methods = ["dagon", "scp", "path", "cp"]
            for i in range(args.rounds):  # the order turns every round: no method always goes first
                order = methods[i % 4 :] + methods[: i % 4]
                rounds.append(one_round(order, src, root, url, agents.ids, mib, not args.cold))
    labels = {
        "dagon": "dagon data server (HTTP, sha256 verified)",
        "scp": "scp over loopback (OpenSSH)",
        "cp": "local cp (same file system)",
        "path": "data path alone (one process, loopback)",
    }
    medians: dict[str, float] = {}
    rows: list[list[object]] = []
    for method, label in labels.items():
        runs = [r["seconds"].get(method) for r in rounds]
        if any(x is None for x in runs):
            continue
        medians[method] = median = statistics.median(runs)
        each = " ".join(f"{mib / x:,.0f}" for x in runs)
        rows.append([label, f"{median:.2f}", f"{mib / median:,.0f}", each, rounds[-1]["cached"][method]])
    rows.extend([*row, "-"] for row in local)
    print_table(
        f"staging {mib} MiB between two agents ({args.rounds} interleaved rounds, orders "
        + ", ".join("/".join(r["order"]) for r in rounds)
        + ")",
        ["method", "median s", "MiB/s (median)", "MiB/s each round", "source in page cache (last round)"],
        rows,
    )
    verdicts = []
    dagon_s = medians["dagon"]
    if "scp" in medians:
        verdicts.append(
            f"{medians['scp'] / dagon_s:.2f}x scp (targets: >= {SCP_FACTOR_TARGET:.1f}x issue 3, >= 1.5x issue 21)"
        )
    verdicts.append(f"{medians['cp'] / dagon_s:.0%} of cp (target >= {CP_SHARE_TARGET:.0%})")
    print("\n  " + "; ".join(verdicts) + f"\n  consumer's report (last round): {rounds[-1]['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
