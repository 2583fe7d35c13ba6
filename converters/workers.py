"""Encoding worker processes, started as ``python -m nanofmt.converters.child encode``.

Why not ``multiprocessing``: its ``spawn`` start method re-imports the caller's ``__main__``
script in every worker, so a plain script calling ``convert()`` without an
``if __name__ == "__main__"`` guard would recurse, and ``fork`` is unsafe once torch or BLAS
threads exist. A worker here is a fresh interpreter that imports only numpy and nanofmt, reads
length-prefixed pickled :class:`Chunk` tasks on stdin and answers each, in order, on stdout.
Workers ignore Ctrl-C (the parent handles it) and exit when their stdin closes, so they never
outlive the conversion.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from collections import deque
from typing import IO, Any

from .encode import Chunk, Encoded, run_chunk

__all__ = ["WorkerPool", "child_env", "serve"]

_LENGTH = struct.Struct("<Q")


def child_env() -> dict[str, str]:
    """The environment for a child interpreter that must import nanofmt exactly as this one does."""
    paths = [p for p in sys.path if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class WorkerPool:
    """``workers`` encoding processes; :meth:`submit` queues a chunk, :meth:`next_result` returns results in submission order."""

    def __init__(self, workers: int) -> None:
        command = [sys.executable, "-m", "nanofmt.converters.child", "encode"]
        self._procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env()) for _ in range(workers)]
        self._outstanding = [0] * workers
        self._order: deque[int] = deque()

    def submit(self, chunk: Chunk) -> None:
        index = min(range(len(self._procs)), key=self._outstanding.__getitem__)
        stdin = self._procs[index].stdin
        assert stdin is not None
        _send(stdin, chunk)
        self._outstanding[index] += 1
        self._order.append(index)

    def next_result(self) -> Encoded:
        index = self._order.popleft()
        proc = self._procs[index]
        assert proc.stdout is not None
        try:
            status, value = _receive(proc.stdout)
        except EOFError:
            raise RuntimeError(f"encoding worker {proc.pid} died (exit code {proc.poll()})") from None
        self._outstanding[index] -= 1
        if status == "error":
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the workers: closing both pipes ends them even mid-task (e.g. after Ctrl-C)."""
        for proc in self._procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass  # the worker is gone already
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve(tasks: IO[bytes], results: IO[bytes]) -> None:
    while True:
        try:
            chunk = _receive(tasks)
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", run_chunk(chunk))
        except Exception as exc:  # sent back to the parent, which raises it
            try:
                pickle.dumps(exc)
                reply = ("error", exc)
            except Exception:
                reply = ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            _send(results, reply)
        except BrokenPipeError:
            return  # the parent stopped listening (interrupted): nothing left to do

