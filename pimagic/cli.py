"""`pimagic build|update|run|shell|clean|status`: the seed's make targets.
`main(argv) -> int` is the only place that exits the process."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import select
import shutil
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

from . import image as image_mod
from . import statedir
from .config import PimagicSettings, load_settings, trust_env_file
from .errors import PimagicError, SandboxError
from .rpc import demux
from .sandbox import Sandbox, docker_client, list_sandboxes, reload_if_sandbox_gone
from .sanitize import clean
from .session import LEASH, PI_SAFE_FLAGS, start_sandbox


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pimagic", description="Run the pi coding agent in a hardened sandbox.")
    p.add_argument("-w", "--workspace", default=None, help="folder mounted at /workspace (default: cwd)")
    p.add_argument("--env-file", default=None, help="settings file (default: WORKSPACE/.env)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (("build", "build the sandbox image"), ("update", "rebuild the image without cache")):
        b = sub.add_parser(name, help=text)
        b.add_argument("--base-image", help="base image with Node >= 22.19 (PIMAGIC_BASE_IMAGE)")
        b.add_argument("--ca-cert", action="append", default=[], metavar="PEM",
                       help="extra CA certificate to trust (repeatable; PIMAGIC_EXTRA_CA_CERTS)")
        b.add_argument("--toolchain", action="store_true", help="keep a C toolchain in the image")
        b.add_argument("--tag", help="image tag (PIMAGIC_IMAGE)")

    r = sub.add_parser("run", help="run pi in the sandbox: its TUI, or `run -- ARGS` (e.g. --version)")
    r.add_argument("args", nargs=argparse.REMAINDER, help="arguments for pi (after --)")
    sub.add_parser("shell", help="a bash shell in the sandbox, as the agent's user")
    c = sub.add_parser("clean", help="stop and remove the workspace's sandbox container")
    c.add_argument("--all", action="store_true", help="every pimagic container on this engine")
    c.add_argument("--reset", action="store_true",
                   help="also delete the folder's pi data (sessions, auth.json, anything the agent left "
                   "in pi's dir); keeps the host-owned pi config")
    sub.add_parser("status", help="show the workspace's sandbox")
    sub.add_parser("trust-env", help="load the folder's .env (or --env-file) pimagic refused, after you checked it")
    return p


def _settings(args: argparse.Namespace) -> PimagicSettings:
    overrides = {}
    if getattr(args, "base_image", None):
        overrides["base_image"] = args.base_image
    if getattr(args, "ca_cert", None):
        overrides["extra_ca_certs"] = args.ca_cert
    if getattr(args, "toolchain", False):
        overrides["toolchain"] = True
    if getattr(args, "tag", None):
        overrides["image"] = args.tag
    settings = load_settings(args.workspace, env_file=args.env_file, **overrides)
    settings = reload_if_sandbox_gone(
        settings, lambda: load_settings(args.workspace, env_file=args.env_file, **overrides)
    )
    if args.command != "trust-env":  # a refused `.env` is said where the user looks
        for note in settings.env_notes:
            print(f"pimagic: note: {note}", file=sys.stderr)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        return _COMMANDS[args.command](args, settings)
    except PimagicError as e:
        print(f"pimagic: error: {clean(str(e))}", file=sys.stderr)  # may quote the sandbox's output
        return 1
    except KeyboardInterrupt:
        return 130


def _cmd_build(args: argparse.Namespace, settings: PimagicSettings) -> int:
    client = docker_client()
    nocache = args.command == "update"
    tag = image_mod.build_image(client, settings, progress=lambda line: print(line, flush=True),
                                nocache=nocache)
    print(f"built {tag} (pi {image_mod.pi_version()})")
    return 0


def _cmd_run(args: argparse.Namespace, settings: PimagicSettings) -> int:
    pi_args = list(args.args)
    if pi_args and pi_args[0] == "--":
        pi_args = pi_args[1:]
    return _exec(settings, ["pi", *PI_SAFE_FLAGS, *pi_args])


SHELL_ENV = {
    "HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent/.config", "INPUTRC": "/etc/inputrc",
    "HISTFILE": "/dev/null", "GIT_CONFIG_GLOBAL": "/dev/null", "PYTHONNOUSERSITE": "1",
}


def _cmd_shell(args: argparse.Namespace, settings: PimagicSettings) -> int:
    # Not a login shell, and not the agent's ~/.bashrc: the home is the agent's to write, and a
    # planted profile would sit between you and the terminal (a key logger). Debian's rc is root's.
    # Nor anything else from the agent's home: every program you run here would read its dotfiles
    # (readline's key macros, git's pager, ...) and the shell would save what you type in it.
    return _exec(settings, ["bash", "--noprofile", "--rcfile", "/etc/bash.bashrc", "-i"], SHELL_ENV)


def _cmd_clean(args: argparse.Namespace, settings: PimagicSettings) -> int:
    client = docker_client()
    sandbox = Sandbox(settings, client)
    targets = list_sandboxes(client) if args.all else [c for c in [sandbox.find()] if c]
    for container in targets:
        sandbox.remove_container(container)
        print(f"removed {container.name}")
    sandbox.close_stale_windows()  # this folder's sandbox can no longer write (.env trust)
    if not targets and not args.reset:
        print("nothing to clean")
    if args.reset:  # after the container is gone: nothing in it can write while we delete
        removed = statedir.reset_pi_data(settings)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("no pi data to reset")
        print(f"kept the host-owned pi config in {statedir.config_dir(settings)}")
    return 0


def _cmd_status(args: argparse.Namespace, settings: PimagicSettings) -> int:
    client = docker_client()
    print(Sandbox(settings, client).status(with_stats=True))
    tag = image_mod.image_tag(settings)
    print(f"image {tag}: {'present' if image_mod.image_exists(client, tag) else 'missing (pimagic build)'}")
    return 0


def _cmd_trust_env(args: argparse.Namespace, settings: PimagicSettings) -> int:
    path, digest, keys, notes = trust_env_file(settings, args.env_file)
    print(f"trusted {path} (sha256 {digest[:16]}); it sets {', '.join(keys) or 'no pimagic keys'}")
    for note in notes:
        print(f"pimagic: note: {note}", file=sys.stderr)
    return 0


# Run first in a TTY exec: makes the terminal exclusive (TIOCEXCL), then becomes the command. Any
# later open() of that pts (a process left from an earlier cell, /proc/<pid>/fd/0, /dev/tty) then
# fails with EBUSY without CAP_SYS_ADMIN, which the sandbox lacks, and seccomp refuses TIOCSTI: no
# agent process can read what the user types (keys pasted into /login) or type into it.
# The session leash makes the terminal exclusive first thing (TIOCEXCL), then prints this OSC
# sequence; `_await_lock` waits for it and swallows it.
TTY_LOCKED = b"\x1b]pimagic-tty-locked\x07"
TTY_LOCK = (LEASH[0], "--tty")
LOCK_TIMEOUT = 30.0
LEASH_GO = b"\r"  # read by the leash (one byte) once the agent's processes were continued
FREEZE_TIMEOUT = 15.0
# Run as the agent's uid: stop every other process of that uid, and check that each one is stopped
# (a process looping on kill(-1, SIGCONT) can wake the others during one pass, so pass again until
# none runs). Exit 0 when all are stopped, 1 when they keep resisting.
FREEZE = """
import os, signal, sys
me, uid = os.getpid(), os.getuid()
def running():
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:  # status is readable even for processes that are not dumpable (pi, gh, git)
            fields = dict(line.split(":", 1) for line in open("/proc/%s/status" % p).read().splitlines())
        except (OSError, ValueError):
            continue
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in ("T", "t", "Z", "X"):
            yield p
for _ in range(400):
    try:
        os.kill(-1, signal.SIGSTOP)
    except ProcessLookupError:
        pass
    if next(running(), None) is None:
        sys.exit(0)
sys.exit(1)
"""


def tty_command(cmd: Sequence[str]) -> list[str]:
    """``cmd`` behind the session leash, which locks the terminal first (for an exec with a TTY)."""
    return [*TTY_LOCK, *LEASH[1:], *cmd]


def _run_bounded(sandbox: Sandbox, cmd: list[str], timeout: float) -> int:
    """Run a short command in the sandbox as the agent's uid; its exit code, or -1 if it did not end
    within `timeout` (the agent's processes can stop a process of their own uid)."""
    exec_id, sock = sandbox.exec_socket(cmd)
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(timeout)
    try:
        raw.shutdown(socket.SHUT_WR)
        for _ in demux(raw):
            pass
    except TimeoutError:
        return -1
    finally:
        raw.close()
    return sandbox.exit_code(exec_id)


@contextlib.contextmanager
def _agent_frozen(sandbox: Sandbox) -> Iterator[None]:
    """Every process of the agent's uid is stopped (SIGSTOP cannot be caught) while a new terminal
    exists but is not yet exclusive: runc hands the pts to the agent's uid, so any of its processes
    could open it in that window and read what the user types. Checked, not assumed (FREEZE); when
    the agent's processes cannot all be stopped, no terminal is opened."""
    try:
        if _run_bounded(sandbox, ["python3", "-I", "-S", "-c", FREEZE], FREEZE_TIMEOUT) != 0:
            raise SandboxError(
                "could not pause the agent's processes to open your terminal safely",
                hint="`pimagic clean` ends the sandbox and everything the agent left running in it",
            )
        yield
    finally:
        _run_bounded(sandbox, ["kill", "-CONT", "-1"], FREEZE_TIMEOUT)


def _await_lock(raw) -> bytes:
    """Read the terminal until the lock's mark; return what followed it (the program's output)."""
    seen = b""
    raw.settimeout(LOCK_TIMEOUT)
    try:
        while TTY_LOCKED not in seen:
            chunk = raw.recv(65536)
            if not chunk:
                raise SandboxError(f"the terminal lock did not start: {clean(seen.decode(errors='replace'))}")
            seen += chunk
    except TimeoutError:
        raise SandboxError("the terminal lock did not answer", hint="`pimagic update` rebuilds the image") from None
    finally:
        raw.settimeout(None)
    return seen.split(TTY_LOCKED, 1)[1]


def _exec(settings: PimagicSettings, cmd: list[str], extra_env: dict[str, str] | None = None) -> int:
    """Run `cmd` in the workspace's sandbox: a TTY when we have one, plain streams otherwise."""
    sandbox = Sandbox(settings)
    # The notebooks' start path: pi's config from PIMAGIC_MODEL / _THINKING, and model servers on
    # the host's loopback relayed for as long as this process runs (see pimagic.relay).
    started = start_sandbox(sandbox, progress=lambda line: print(line, file=sys.stderr, flush=True))
    for note in started.notes:
        print(f"pimagic: note: {clean(note)}", file=sys.stderr)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    env = {"TERM": os.environ.get("TERM", "xterm-256color"), **(extra_env or {})}
    if not tty:
        exec_id, sock = sandbox.exec_socket(cmd, environment=env)
    else:
        with _agent_frozen(sandbox):
            exec_id, sock = sandbox.exec_socket(tty_command(cmd), tty=True, environment=env)
            first = _await_lock(getattr(sock, "_sock", sock))
        getattr(sock, "_sock", sock).sendall(LEASH_GO)  # the agent runs again: start the program
    raw = getattr(sock, "_sock", sock)
    try:
        if tty:
            os.write(sys.stdout.fileno(), first)
            _pump_tty(sandbox, exec_id, raw)
        else:
            _pump_plain(raw)
    finally:
        raw.close()
    code = sandbox.exit_code(exec_id)
    return code if code >= 0 else 1


def _pump_plain(raw) -> None:
    import socket as socket_mod

    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read() if not sys.stdin.closed else b""
        if data:
            raw.sendall(data)
    raw.shutdown(socket_mod.SHUT_WR)
    # Output piped elsewhere stays byte-exact; on a terminal, escape sequences from the sandbox
    # (clipboard, title, cursor) are stripped: nothing here is drawing a TUI.
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in (1, 2)}
    for stream, payload in demux(raw):
        target = sys.stdout if stream == 1 else sys.stderr
        if target.isatty():
            target.write(clean(decoders[stream].decode(payload), overwrite=True))
        else:
            target.buffer.write(payload)
        target.flush()


def _pump_tty(sandbox: Sandbox, exec_id: str, raw) -> None:
    """Raw-mode terminal <-> exec socket, with window resizes forwarded."""
    import termios
    import tty as tty_mod

    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()

    def resize(*_: object) -> None:
        cols, rows = shutil.get_terminal_size()
        try:
            sandbox.client.api.exec_resize(exec_id, height=rows, width=cols)
        except Exception:
            pass

    old = termios.tcgetattr(fd_in)
    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        tty_mod.setraw(fd_in)
        resize()
        while True:
            ready, _, _ = select.select([raw, fd_in], [], [])
            if raw in ready:
                data = raw.recv(65536)
                if not data:
                    return
                os.write(fd_out, data)
            if fd_in in ready:
                data = os.read(fd_in, 65536)
                if not data:
                    return
                raw.sendall(data)
    finally:
        termios.tcsetattr(fd_in, termios.TCSADRAIN, old)
        signal.signal(signal.SIGWINCH, previous)


_COMMANDS = {
    "build": _cmd_build,
    "update": _cmd_build,
    "run": _cmd_run,
    "shell": _cmd_shell,
    "clean": _cmd_clean,
    "status": _cmd_status,
    "trust-env": _cmd_trust_env,
}

if __name__ == "__main__":
    raise SystemExit(main())
