"""Real container engines for tests and benchmarks: a private dockerd and busybox images.

``Dockerd`` starts the engine exactly as ENVIRONMENT.md says (no bridge, no
iptables changes) on a private socket, data root, exec root and pid file, so it
never collides with another daemon; it is stopped by PID. Images are built
locally from the busybox-static binary (there is no registry to pull from).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

__all__ = [
    "BUSYBOX",
    "BUSYBOX_IMAGE",
    "CHARLIECLOUD_MISSING",
    "DOCKER_MISSING",
    "Dockerd",
    "busybox_rootfs",
    "charliecloud_binary",
    "dockerd_binary",
    "is_static",
]

BUSYBOX = "/bin/busybox"
BUSYBOX_IMAGE = "dagon-test/busybox:latest"
DOCKER_MISSING = "dockerd, docker or busybox-static (a static /bin/busybox) not installed; run .ci/setup"
CHARLIECLOUD_MISSING = (
    "ch-run (charliecloud-runtime), mksquashfs (squashfs-tools) or busybox-static not installed; run .ci/setup"
)


def is_static(path: str) -> bool:
    """Whether the ELF executable at ``path`` has no program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only (our CI machines)
            return False
        order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
        phoff = int.from_bytes(head[32:40], order)
        phentsize = int.from_bytes(head[54:56], order)
        phnum = int.from_bytes(head[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i : i + 4], order) != 3 for i in range(0, len(table), phentsize))  # PT_INTERP


def busybox_ok() -> bool:
    return os.access(BUSYBOX, os.X_OK) and is_static(BUSYBOX)


def dockerd_binary() -> str | None:
    found = shutil.which("dockerd") or next((p for p in ("/usr/sbin/dockerd",) if os.access(p, os.X_OK)), None)
    if found is None or shutil.which("docker") is None or not busybox_ok():
        return None
    return found


def charliecloud_binary() -> str | None:
    found = shutil.which("ch-run")
    return found if found and shutil.which("mksquashfs") and busybox_ok() else None


def busybox_rootfs(root: Path, *, extra_dirs: tuple[str, ...] = ()) -> Path:
    """A minimal image tree: busybox-static with its applets linked in ``/bin``."""
    for d in ("bin", "tmp", "dev", "proc", "sys", "etc", "mnt", "home", "root", *extra_dirs):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


class Dockerd:
    """A private Docker engine: ``start()``, ``url``, ``docker(*args)``, ``stop()`` (by PID)."""

    def __init__(self, *, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # exec-root holds containerd sockets whose paths must stay short (sun_path is 108 bytes).
        self.exec_root = Path(tempfile.mkdtemp(prefix="dgx-"))
        self.socket = self.exec_root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log = workdir / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary, "-H", self.url, "--bridge=none", "--iptables=false", "--ip6tables=false",
                    "--data-root", str(self.workdir / "data"), "--exec-root", str(self.exec_root),
                    "--pidfile", str(self.exec_root / "dockerd.pid"),
                ],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}; see {self.log}")
            if self.socket.exists() and self._ping():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dockerd did not answer on {self.url} within {timeout:g} s; see {self.log}")

    def _ping(self) -> bool:
        result = subprocess.run(
            ["docker", "-H", self.url, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def docker(self, *args: str, input: bytes | None = None) -> str:
        """Run the docker CLI against this engine; raise on failure."""
        result = subprocess.run(
            ["docker", "-H", self.url, *args], input=input, capture_output=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def import_busybox(self, tag: str = BUSYBOX_IMAGE) -> str:
        """``docker import`` a busybox-static rootfs as ``tag`` (no registry involved)."""
        with tempfile.TemporaryDirectory(prefix="dagon-rootfs-") as tmp:
            root = busybox_rootfs(Path(tmp) / "rootfs")
            tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
        self.docker("import", "-", tag, input=tar)
        return tag

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                # dockerd stops its containers and its own containerd on SIGTERM.
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        finally:
            # data-root holds overlay mounts while running; after the stop it is plain files.
            shutil.rmtree(self.exec_root, ignore_errors=True)
