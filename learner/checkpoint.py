"""Local checkpoints of the learner: written atomically, loaded without unpickling code.

A checkpoint is one file ``ckpt-<training step>.pt`` in the checkpoint directory holding a dict
of tensors and plain values (trainer state: models, optimizers, DDPG targets; replay buffer
metadata and rows; consumed offsets; snapshot version counter; watermark). It is written to a
temporary file in the same directory, fsynced, then renamed over the final name with
``os.replace`` (atomic on POSIX), and the directory is fsynced: a crash (SIGKILL, power loss)
leaves either the previous checkpoint or the new one, never a torn file.

Loading uses ``torch.load(weights_only=True)``: only tensors and primitive containers are
accepted, so a checkpoint cannot execute code. The newest readable checkpoint wins; an
unreadable one (e.g. a disk that lied about fsync) is logged and the next older one is used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import IO, Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)

    def lock(self) -> None:
        """Hold an exclusive lock on the directory for this process's lifetime: a second learner
        on the same checkpoints would fight over offsets and versions. The OS drops the lock
        when the process dies (SIGKILL included)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self.directory / ".lock", "a+")  # noqa: SIM115 - kept open to hold the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RuntimeError(f"another learner holds {self.directory}/.lock") from None
        self._lock_file: IO[str] | None = f

    def unlock(self) -> None:
        f = getattr(self, "_lock_file", None)
        if f is not None:
            f.close()  # closing the file releases the flock
            self._lock_file = None

    def paths(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step`` atomically; prune beyond ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"ckpt-{step:012d}.pt"
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        start = time.perf_counter()
        try:
            with open(tmp, "wb") as f:
                torch.save({"format": FORMAT_VERSION, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        log.info(
            "checkpoint %s written (%.1f MB, %.2f s)",
            final.name,
            final.stat().st_size / 1e6,
            time.perf_counter() - start,
        )
        return final

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint as (path, state) on CPU, or None."""
        for path in self.paths():
            try:
                return path, load(path)
            except Exception as exc:  # a corrupt file must not block a restart: try the older one
                log.error("checkpoint %s unreadable, trying an older one: %s", path.name, exc)
        return None


def load(path: str | Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a learner checkpoint of format {FORMAT_VERSION}")
    return state


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
