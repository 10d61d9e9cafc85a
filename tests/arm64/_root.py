"""The emulated Raspberry Pi root that ``.ci/arm64-root`` builds, for the ``arm64`` tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from _broker import missing

from dagon._keys import add_pin, agent_signer, enroll
from dagon.protocol import raw_public_key

__all__ = ["PiRoot", "pi_root_or_missing"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path("/var/cache/dagon-ci/arm64-root")
_PATH = "/opt/dagon/bin:/usr/local/bin:/usr/bin:/bin"


class PiRoot:
    """An arm64 Debian root run with ``chroot`` under qemu-user (shares the host's network)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def inside(self, host_path: Path) -> str:
        """``host_path`` (under the root) as the emulated system sees it."""
        return "/" + str(host_path.relative_to(self.path))

    def host_path(self, inside: str) -> Path:
        """A path of the emulated system, as the host sees it."""
        return self.path / inside.lstrip("/")

    def fresh_home(self, name: str) -> Path:
        home = self.path / "var/lib/dagon-tests" / name
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        return home

    def _argv(self, argv: tuple[str, ...], env: Mapping[str, str]) -> list[str]:
        environ = {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}
        return ["chroot", str(self.path), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv]

    def run(
        self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 120, ok: tuple[int, ...] = (0,)
    ) -> str:
        done = subprocess.run(self._argv(argv, env or {}), capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode in ok, f"{argv} in the arm64 root exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout

    def start_agent(
        self,
        url: str,
        client_home: Path,
        name: str,
        *,
        log: Path,
        slots: int = 2,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """An aarch64 ``dagon-agent`` with its own home inside the root, enrolled with ``client_home``'s
        coordinator key (what ``dagon-agent enroll`` does on a Pi)."""
        home = self.fresh_home(name)
        enroll(home, client_home / "keys" / "coordinator.pub")
        # what `dagon agents approve NAME` does on the coordinator's machine
        add_pin(client_home / "keys" / "known_agents", name, raw_public_key(agent_signer(home).public_key))
        inside = self.inside(home)
        argv = (
            "/opt/dagon/bin/dagon-agent", "--broker", url, "--id", name, "--slots", str(slots),
            "--scratch", f"{inside}/scratch", *args,
        )  # fmt: skip
        with log.open("wb") as out:
            environ = {"DAGON_HOME": inside, **(env or {})}
            return subprocess.Popen(self._argv(argv, environ), stdout=out, stderr=subprocess.STDOUT)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[None]:
        """``/proc``, ``/dev`` and ``/dev/pts`` (pseudo-terminals playing serial devices) inside the root
        while the tests run (unmounted afterwards)."""
        done: list[Path] = []
        try:
            for name, cmd in (
                ("proc", ["mount", "-t", "proc", "proc"]),
                ("dev", ["mount", "--bind", "/dev"]),
                ("dev/pts", ["mount", "--bind", "/dev/pts"]),
            ):
                target = self.path / name
                if subprocess.run(["mountpoint", "-q", str(target)], check=False).returncode != 0:
                    subprocess.run([*cmd, str(target)], check=True)
                    done.append(target)
            yield
        finally:
            for target in reversed(done):
                if subprocess.run(["umount", str(target)], check=False).returncode != 0:
                    subprocess.run(["umount", "-l", str(target)], check=False)


def pi_root_or_missing() -> PiRoot:
    """The root with this checkout's code installed (``.ci/arm64-root`` refreshes the wheel in
    seconds when the root exists), or a missing-component failure/skip that says how to build it."""
    path = Path(os.environ.get("DAGON_ARM64_ROOT", DEFAULT_ROOT))
    if os.geteuid() != 0:
        missing("the arm64 tests chroot into an emulated root: run them as root")
    if not (path / ".dagon-base").exists() or not (path / "opt/dagon/bin/python").exists():
        missing(f"no emulated arm64 root at {path}: run `bash .ci/arm64-root` (or .ci/setup)")
    refresh = subprocess.run(
        ["bash", str(REPO / ".ci/arm64-root"), str(path)], capture_output=True, text=True, check=False
    )
    if refresh.returncode != 0:
        sys.stderr.write(refresh.stdout + refresh.stderr)
        raise AssertionError(f".ci/arm64-root failed ({refresh.returncode}): {refresh.stderr[-1500:]}")
    return PiRoot(path)
