"""Pod DNS names for the process node, through a managed block in /etc/hosts.

Pods on the process node share this machine's network namespace and resolver, and the test
machines have no cluster DNS. glibc reads /etc/hosts on every lookup, so a block of
``127.0.0.N  <hostname>.<subdomain> ...`` lines makes the names of pods behind a headless
Service resolve for every process, with no root DNS server and no change to the processes.
Each agent owns one block, marked with its pid; blocks left by a dead agent are dropped the
next time any agent writes. The file is rewritten in place (it may be a bind mount) under an
flock so two agents (a test run and ``make dev-cluster``) can share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

HOSTS = Path(os.environ.get("FORGELINE_HOSTS_FILE", "/etc/hosts"))
_BLOCK = re.compile(r"# BEGIN forgeline-processnode pid=(\d+) .*?# END forgeline-processnode pid=\1\n", re.S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostsBlock:
    def __init__(self, owner: str, path: Path = HOSTS) -> None:
        self.path = path
        self.owner = owner
        self.pid = os.getpid()
        self._last: list[tuple[str, list[str]]] | None = None

    def writable(self) -> bool:
        return os.access(self.path, os.W_OK)

    def set(self, entries: list[tuple[str, list[str]]]) -> None:
        """Replace this agent's block with ``entries`` (ip, names); a no-op if nothing changed."""
        entries = sorted(entries)
        if entries == self._last:
            return
        self._last = entries
        body = "".join(f"{ip}\t{' '.join(names)}\n" for ip, names in entries)
        block = (
            f"# BEGIN forgeline-processnode pid={self.pid} {self.owner}\n{body}"
            f"# END forgeline-processnode pid={self.pid}\n"
            if entries
            else ""
        )
        self._rewrite(block)

    def clear(self) -> None:
        self._last = None
        with contextlib.suppress(OSError):
            self._rewrite("")

    def _rewrite(self, block: str) -> None:
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            text = f.read()

            def keep(m: re.Match[str]) -> str:
                pid = int(m.group(1))
                return "" if pid == self.pid or not _alive(pid) else m.group(0)

            text = _BLOCK.sub(keep, text)
            if text and not text.endswith("\n"):
                text += "\n"
            f.seek(0)
            f.write(text + block)
            f.truncate()
