"""A resident worker: `reprozoo` commands that start in a process which has already imported
torch, Lightning, transformers and ClearML (~7 s of this start-up on 2 cores).

    reprozoo worker                       # serves until Ctrl-C or SIGTERM; prints the socket
    export REPROZOO_WORKER=/run/user/1000/reprozoo/worker.sock
    reprozoo train --model …              # runs in a fork of the worker, this terminal's I/O

The worker imports, then waits on a Unix socket (mode 0600, same user only). A command whose
REPROZOO_WORKER names it sends its argv, working directory, environment and stdin/stdout/stderr
(SCM_RIGHTS); the worker forks a session, which forks the runner: the runner takes them over and
runs the command as `reprozoo ARGV` would, to the same exit code, which the client exits with.
Ctrl-C and SIGTERM sent to the client are passed on to the runner (a checkpoint, then 128 + signal);
if the client dies, its runner gets SIGTERM.

Fork keeps what the worker imported, so it only serves a command that would import the same: the same
interpreter and reprozoo code, the same installed packages and clearml.conf, and the same environment
up to a shell's bookkeeping variables. Otherwise the client says why in one line and runs the command
itself. Nothing runs in the worker before the fork (no tensor op, no thread pool): the run is the
same as in a new process, bit for bit (tests/test_worker.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from reprozoo.errors import UserError

ENV_VAR = "REPROZOO_WORKER"
# Set by a shell or a terminal per window or login; nothing imported reads them.
VOLATILE_ENV = frozenset({ENV_VAR, "_", "PWD", "OLDPWD", "SHLVL", "COLUMNS", "LINES", "TERM", "WINDOWID", "SSH_TTY",
                          "SSH_CLIENT", "SSH_CONNECTION", "TMUX_PANE", "STY", "WINDOW", "TERM_SESSION_ID",
                          "ITERM_SESSION_ID", "XDG_SESSION_ID"})
# What the runner imports on the way to its first step (train's lazy imports included), imported once
# by the worker. Module names, not imports: the worker sits above train in the import layers.
PRELOAD = ("torch", "lightning.pytorch", "transformers", "transformers.modeling_utils", "safetensors.torch",
           "clearml", "matplotlib.backends.backend_agg", "reprozoo.cli", "reprozoo.train", "reprozoo.model",
           "reprozoo.modeling_reprozoo", "reprozoo.data.module", "reprozoo.resume", "reprozoo.tracking",
           "reprozoo.progress", "reprozoo.metrics", "reprozoo.pruning", "reprozoo.containers.identity")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_REQUEST = 4 << 20  # argv + environment; a bigger request is refused unread
HEADER = struct.Struct("!I")


class WorkerError(UserError, OSError):
    """The worker's socket cannot be served (another worker on it, a path too long, …)."""


@dataclass
class Request:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    umask: int
    ignored_signals: list[int]  # what the client's shell ignores (a background job's SIGINT) the run ignores
    fingerprint: str


def default_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(runtime) / "reprozoo" if runtime else Path(f"/tmp/reprozoo-{os.getuid()}")
    return root / "worker.sock"


def fingerprint() -> str:
    """What fork would carry over from the worker's imports: the interpreter, reprozoo's files, the
    installed packages (a site-packages folder changes when pip installs or removes one) and
    clearml.conf. sys.path[0] is left out: it is the script's folder or the working directory."""
    digest = hashlib.sha256(sys.executable.encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(f"{path.relative_to(package)} {stat.st_mtime_ns} {stat.st_size}\n".encode())
    conf = os.environ.get("CLEARML_CONFIG_FILE") or str(Path.home() / "clearml.conf")
    for entry in [*sys.path[1:], conf]:
        with contextlib.suppress(OSError):
            digest.update(f"{entry} {os.stat(entry or '.').st_mtime_ns}\n".encode())
    return digest.hexdigest()


def refusal(request: Request, served_env: dict[str, str], served_fingerprint: str) -> str | None:
    """Why this worker cannot run the request as a new process would, or None. Names, never values:
    the environment holds credentials."""
    if request.fingerprint != served_fingerprint:
        return "its Python, reprozoo code, installed packages or clearml.conf changed since it started; restart it"
    names = {*request.env, *served_env} - VOLATILE_ENV
    differ = sorted(n for n in names if request.env.get(n) != served_env.get(n))
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        return f"it was started in another environment (differs in {shown}); start it from this shell"
    return None


# ---------------------------------------------------------------------------------------------- client


def hand_over(argv: list[str]) -> int | None:
    """Run `reprozoo ARGV` in the worker REPROZOO_WORKER names: its exit code, or None to run it here."""
    path = os.environ.get(ENV_VAR)
    if not path or argv[1:2] == ["worker"]:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        _say(f"no worker on {path} ({err.strerror or err}); running here (start one with `reprozoo worker`)")
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    ignored = [int(s) for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
    request = Request(argv=list(argv), cwd=os.getcwd(), env=dict(os.environ), umask=umask, ignored_signals=ignored,
                      fingerprint=fingerprint())
    payload = json.dumps(request.__dict__).encode()
    with sock:
        try:
            socket.send_fds(sock, [HEADER.pack(len(payload))], [0, 1, 2])
            sock.sendall(payload)
            reply = _read_line(sock)
        except OSError as err:
            _say(f"the worker on {path} did not answer ({err}); running here")
            return None
        if reply is None or "refused" in reply:
            why = reply["refused"] if reply else "it closed the connection"
            _say(f"the worker on {path} cannot run this: {why}; running here")
            return None
        return _follow(sock, int(reply["pid"]), ignored)


def _follow(sock: socket.socket, pid: int, ignored: list[int]) -> int:
    """Wait for the runner's exit, passing on the signals that stop a run."""
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in STOP_SIGNALS:
        if signum not in ignored:
            signal.signal(signum, forward)
    reply = _read_line(sock)
    if reply is None:
        _say(f"the worker's session for runner {pid} ended without its exit status")
        return 1
    return int(reply["exit"])


# ---------------------------------------------------------------------------------------------- worker


def serve(path: Path) -> Request | None:
    """Import, then serve commands on PATH until SIGTERM or SIGINT (returns None). In a runner, a fork of
    this process that has taken over a client's command, it returns that command's Request instead."""
    if not hasattr(os, "pidfd_open"):
        raise WorkerError("`reprozoo worker` needs Linux (it waits on its runs with pidfd_open); run commands without it")
    began = time.perf_counter()
    served_env = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # ClearML's configuration (~1 s of HOCON parsing at a run's Task.init): from the environment and
    # clearml.conf, which a served command shares (see refusal and fingerprint).
    importlib.import_module("clearml.config").config_obj.get("sdk")
    # What the imports set (torch sets some variables): a new process's imports would set them too.
    imported_env = {k: v for k, v in os.environ.items() if served_env.get(k) != v}
    listener = _listen(path)
    served_fingerprint = fingerprint()
    os.environ[ENV_VAR] = str(path)  # so that a client's REPROZOO_WORKER is no difference
    _say(f"worker {os.getpid()} ready on {path} (imports {time.perf_counter() - began:.1f} s); in a shell with this "
         f"environment: export {ENV_VAR}={path}")
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # sessions reap themselves
    # SIGTERM stops it, as it stops a service; SIGINT (Ctrl-C) too, unless it was started ignoring SIGINT
    # (a background job of a script), as Python leaves it then.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = os.getpid()
    try:
        while True:
            conn, _ = listener.accept()
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork():
                conn.close()
                continue
            listener.close()
            request = _session(conn, served_env, served_fingerprint)  # returns only in the runner
            _adopt(request, imported_env)
            _say(f"running in worker {server} (pid {os.getpid()})")
            return request
    except KeyboardInterrupt:
        _say(f"worker {os.getpid()} stopped; runs it started go on")
        return None
    finally:
        if os.getpid() == server:  # not in a runner, which returns through here
            signal.signal(signal.SIGCHLD, previous)
            with contextlib.suppress(OSError):
                listener.close()
                path.unlink()


@contextlib.contextmanager
def started(path: Path, log: Path, env: Mapping[str, str] | None = None, timeout: float = 180) -> Iterator[subprocess.Popen]:
    """`reprozoo worker --socket PATH` in a new process (its output in LOG), once it serves; stopped with
    SIGTERM afterwards, which it handles also when started ignoring SIGINT. For scripts and tests."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reprozoo", "worker", "--socket", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, env=None if env is None else dict(env))
    try:
        deadline = time.monotonic() + timeout
        while "ready on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise WorkerError(f"the worker on {path} did not start in {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if len(os.fsencode(path)) >= 100:
        raise WorkerError(f"worker socket path too long for a Unix socket: {path}; pass a shorter --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        if path.exists():
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # a worker that died without removing its socket
            else:
                raise WorkerError(f"a worker already serves {path}; stop it or pass another --socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(16)
    return listener


def _session(conn: socket.socket, served_env: dict[str, str], served_fingerprint: str) -> Request:
    """In a fork per connection: check the request, fork the runner (which returns from here), report
    its exit status. Never returns in the session itself."""
    try:
        os.setsid()  # the worker's terminal (its Ctrl-C) is not the run's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        request, fds = _receive(conn)
        why = "another user's command" if uid != os.getuid() else refusal(request, served_env, served_fingerprint)
        if why:
            _send_line(conn, {"refused": why})
            os._exit(0)
        runner = os.fork()
        if runner == 0:
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
            for fd in fds:
                os.close(fd)
            conn.close()
            for signum in STOP_SIGNALS:  # as a new process would start
                default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, signal.SIG_IGN if signum in request.ignored_signals else default)
            return request
        for fd in fds:
            os.close(fd)
        _send_line(conn, {"pid": runner})
        _send_line(conn, {"exit": _wait(conn, runner)})
    except BaseException:  # the session never returns into the worker's loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _wait(conn: socket.socket, runner: int) -> int:
    """The runner's exit code (128 + signal when a signal ended it); SIGTERM to it if the client goes."""
    pidfd = os.pidfd_open(runner)
    watching = [pidfd, conn]
    while True:
        ready, _, _ = select.select(watching, [], [])
        if pidfd in ready:
            break
        if conn in ready and not conn.recv(1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(runner, signal.SIGTERM)  # the client is gone: stop as on a preemption
            watching = [pidfd]
    _, status = os.waitpid(runner, 0)
    os.close(pidfd)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _adopt(request: Request, imported_env: dict[str, str]) -> None:
    """The runner becomes the client's command: its directory, umask, environment (with what the imports
    set), argv and std streams."""
    os.chdir(request.cwd)
    os.umask(request.umask)
    os.environ.clear()
    os.environ.update(request.env)
    os.environ.update(imported_env)
    os.environ.pop(ENV_VAR, None)  # what the run starts (DDP ranks, agents) runs in its own process
    sys.argv = list(request.argv)
    # The same stream objects (logging handlers made in the worker hold them), now on the client's fds;
    # stdout buffered by line on a terminal, as Python starts it.
    sys.stdout.reconfigure(line_buffering=os.isatty(1))


def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
    conn.settimeout(30)
    head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    if len(head) != HEADER.size or len(fds) != 3:
        raise OSError("a request without its header and three file descriptors")
    size = HEADER.unpack(head)[0]
    if size > MAX_REQUEST:
        raise OSError(f"a request of {size} bytes (at most {MAX_REQUEST})")
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(min(1 << 16, size - len(body)))
        if not chunk:
            raise OSError("a request cut short")
        body += chunk
    conn.settimeout(None)
    data = json.loads(body)
    request = Request(argv=[str(a) for a in data["argv"]], cwd=str(data["cwd"]),
                      env={str(k): str(v) for k, v in dict(data["env"]).items()}, umask=int(data["umask"]) & 0o777,
                      ignored_signals=[int(n) for n in data["ignored_signals"]][:8], fingerprint=str(data["fingerprint"]))
    return request, fds


def _send_line(conn: socket.socket, message: dict[str, object]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _read_line(sock: socket.socket) -> dict | None:
    line = bytearray()
    while not line.endswith(b"\n"):
        try:
            chunk = sock.recv(1)
        except InterruptedError:
            continue
        if not chunk:
            return None
        line += chunk
        if len(line) > 4096:
            raise OSError("the worker's reply is too long")
    return json.loads(line)


def _say(message: str) -> None:
    print(f"reprozoo: {message}", file=sys.stderr, flush=True)
