"""Issue 9, class 8: output channels the agent writes to, and the terminal of `pimagic shell`.

- file names from the sandbox are escaped in every bundle of the change report (render.escape_name);
- `%pi logs` strips terminal escape sequences from pi's stderr and the container's log;
- seccomp allows socket()/socketpair() only for AF_UNIX/INET/INET6/NETLINK and refuses TIOCSTI;
- the TTY of `pimagic shell`/`run` is exclusive (TIOCEXCL, cli.TTY_LOCK): no agent process opens it.
- the output of a non-TTY `pimagic shell`/`run` is stripped of escape sequences when shown on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import time

import pytest
from _support import Pty, readable
from secharness import AGENT, SECCOMP

from pimagic.sandbox import Sandbox
from pimagic.sanitize import clean
from pimagic.scripted_model import call, say

TTY_LOCK = "exclusive terminal (TIOCEXCL, pimagic/cli.py TTY_LOCK)"
NAME_ESCAPING = "file-name escaping (pimagic/render.py escape_name)"
LOG_SANITISER = "control-sequence stripping of %pi logs (render.clean)"

# ------------------------------------------------------------------------- change report


EVIL_NAME = "ok.sh\r\x1b[2Kall clean, nothing to review\nfake line\u202e"


def test_agent_file_names_cannot_rewrite_the_change_report(settings, scripted, pi_magics, workspace):
    """The agent creates an executable whose name carries CR, ESC, LF and a bidi override: every
    bundle shows the name escaped and the warning intact, on one line."""
    command = (
        "python3 -c \"import os; n='ok.sh\\r\\x1b[2Kall clean, nothing to review\\nfake line\\u202e';"
        " open(n,'w').write('echo pwned'); os.chmod(n, 0o755)\""
    )
    scripted.push(call("bash", command=command), say("done"))
    result = pi_magics.shell.run_cell_magic("pi", "", "make a script")
    assert (workspace / EVIL_NAME).exists()
    bundle = result._repr_mimebundle_()
    shown = "ok.sh\\r\\x1b[2Kall clean, nothing to review\\nfake line\\u202e"
    plain = bundle["text/plain"]
    warning = next(line for line in plain.splitlines() if "your machine may run" in line)
    assert warning.startswith("[!] the agent created or changed files your machine may run: ")
    assert shown in warning and warning.endswith("(review before running anything here)"), warning
    assert shown in bundle["text/html"] and "your machine may run" in bundle["text/html"]
    md = bundle["text/markdown"]
    assert "your machine may run" in md and "ok\\.sh\\\\r\\\\x1b\\[2Kall clean" in md, md[-1500:]
    for doc in bundle.values():
        assert not {"\r", "\x1b", "\u202e"} & set(doc), f"{NAME_ESCAPING}: raw control in {doc[-800:]!r}"
        assert "\nfake line" not in doc
    assert EVIL_NAME in result.changed_files  # the raw name is kept for programmatic use


def test_control_folding_cleaner_erases_the_warning():
    """Control: the cleaner before the fix folded a CR over the whole notice."""
    notice = f"the agent created or changed files your machine may run: {EVIL_NAME} (review before running)"
    assert "your machine may run" not in clean(notice, overwrite=True)
    assert "your machine may run" in clean(notice)


def test_progress_bars_in_tool_output_still_fold(settings, scripted, pi_magics):
    """Allowed use: a tool's CR progress output reads as a terminal would show it."""
    scripted.push(call("bash", command="printf 'step 10%%\\rstep 100%%\\n'"), say("done"))
    result = pi_magics.shell.run_cell_magic("pi", "", "progress")
    plain = result._repr_mimebundle_()["text/plain"]
    assert "\n    step 100%" in plain and "\n    step 10%" not in plain, plain


# ------------------------------------------------------------------------------ %pi logs

OSC52 = "\x1b]52;c;cGFzdGVkIGJ5IHRoZSBhZ2VudA==\x07"
TITLE = "\x1b]0;owned\x07"


def test_pi_logs_strips_escape_sequences(settings, scripted, pi_magics, capsys):
    scripted.push(say("hi"))
    pi_magics.shell.run_cell_magic("pi", "", "hello")
    session = pi_magics.session
    # pi's stderr (the agent's way in: anything pi prints about tools) and the container's log.
    session.rpc._note_stderr(f"warn {OSC52}{TITLE}\x1b[1;1Hmoved\tTAB\r\nnext\n".encode())
    code, _, err = session.sandbox.exec(["sh", "-c", f"printf '{OSC52}log-line\\n' > /proc/1/fd/1"], user="0")
    assert code == 0, err
    deadline = time.monotonic() + 10
    while "log-line" not in session.sandbox.logs(tail=20) and time.monotonic() < deadline:
        time.sleep(0.2)
    capsys.readouterr()
    pi_magics.shell.run_line_magic("pi", "logs")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, f"{LOG_SANITISER}: {out!r}"
    assert "warn moved\tTAB\nnext" in out and "log-line" in out  # text, tabs and newlines stay
    assert OSC52 in session.rpc.stderr_tail  # control: the raw tail holds the sequence


# ----------------------------------------------------------------------------- seccomp

PROBE = textwrap.dedent(
    r"""
    import ctypes, errno, fcntl, json, os, socket, termios
    res = {}
    for name, fam, kind in (("vsock", 40, socket.SOCK_STREAM), ("alg", 38, socket.SOCK_SEQPACKET),
                            ("unix", socket.AF_UNIX, socket.SOCK_STREAM), ("inet", socket.AF_INET, socket.SOCK_STREAM),
                            ("inet6", socket.AF_INET6, socket.SOCK_DGRAM),
                            ("netlink", socket.AF_NETLINK, socket.SOCK_DGRAM)):
        try:
            socket.socket(fam, kind).close()
            res[name] = "OK"
        except OSError as e:
            res[name] = errno.errorcode.get(e.errno, str(e.errno))
    try:
        socket.socketpair(socket.AF_UNIX).__class__
        res["socketpair_unix"] = "OK"
    except OSError as e:
        res["socketpair_unix"] = errno.errorcode.get(e.errno)
    # TIOCSTI on our own controlling terminal (the legitimate-looking case), plain and with high bits.
    m, s = os.openpty()
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        fcntl.ioctl(s, termios.TIOCSCTTY, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        out = {}
        for name, req in (("tiocsti", termios.TIOCSTI), ("tiocsti_hi", (1 << 32) | termios.TIOCSTI),
                          ("tiocgwinsz", termios.TIOCGWINSZ)):
            n = libc.syscall(16, s, ctypes.c_ulong(req), ctypes.create_string_buffer(8))
            out[name] = "OK" if n == 0 else errno.errorcode.get(ctypes.get_errno())
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.wait()
    os.close(w)
    res.update(json.loads(os.read(r, 4096)))
    print("RESULT " + json.dumps(res))
    """
)


def probe_result(text: str) -> dict:
    line = next(x for x in text.splitlines() if x.strip().startswith("RESULT "))
    return json.loads(line.strip().removeprefix("RESULT "))


def test_agent_socket_families_and_tiocsti(settings, scripted, pi_magics, workspace):
    """Through the agent's bash tool: AF_VSOCK/AF_ALG and TIOCSTI refused; the families tools use work."""
    (workspace / "probe.py").write_text(PROBE)
    scripted.push(call("bash", command="python3 /workspace/probe.py"), say("done"))
    result = pi_magics.shell.run_cell_magic("pi", "", "probe")
    res = probe_result(result.tool_calls[0].result)
    assert res["vsock"] == "EPERM" and res["alg"] == "EPERM", f"expected {SECCOMP}: {res}"
    assert res["tiocsti"] == "EPERM" and res["tiocsti_hi"] == "EPERM", f"expected {SECCOMP}: {res}"
    for allowed in ("unix", "inet", "inet6", "netlink", "socketpair_unix", "tiocgwinsz"):
        assert res[allowed] == "OK", f"{SECCOMP} blocked {allowed}: {res}"


def test_control_without_seccomp_the_same_calls_pass_the_filter(docker_client, sandbox_image):
    """Control: the same probe with seccomp unconfined gets the kernel's own answers, not EPERM."""
    out = docker_client.containers.run(
        sandbox_image, ["python3", "-c", PROBE], user=AGENT, cap_drop=["ALL"], remove=True,
        security_opt=["seccomp=unconfined"], network_mode="none",
    ).decode()
    res = probe_result(out)
    assert res["vsock"] != "EPERM" and res["alg"] != "EPERM", res
    assert res["tiocsti"] == "OK" and res["tiocsti_hi"] == "OK", res


# ---------------------------------------------------------------------------- the CLI's TTY

TTY_PROBE = textwrap.dedent(
    r"""
    import ctypes, errno, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def readlink(path):
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(267, -100, path.encode(), buf, 255)
        return buf.raw[:n].decode() if n > 0 else ""
    def raw_open(path):
        fd = libc.syscall(257, -100, path.encode(), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK, 0)
        if fd < 0:
            return errno.errorcode.get(ctypes.get_errno())
        os.close(fd)
        return "OK"
    res = {}
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            tty = readlink(f"/proc/{p}/fd/0")
            if tty.startswith("/dev/pts/"):
                res[tty] = raw_open(tty)
                res[f"/proc/{p}/fd/0"] = raw_open(f"/proc/{p}/fd/0")
    print(json.dumps(res))
    """
)

RUN_CLI = (
    "import sys, pimagic.cli as c\n"
    "if sys.argv[1] == 'control':  # no terminal lock, no freeze while the terminal appears\n"
    "    import contextlib\n"
    "    c.tty_command = lambda cmd: list(cmd)\n"
    "    c._agent_frozen = lambda sandbox: contextlib.nullcontext()\n"
    "    c._await_lock = lambda raw: b''\n"
    "if sys.argv[1] == 'agent-home':  # the shell with the agent's home (a control)\n"
    "    c.SHELL_ENV = {}\n"
    "sys.exit(c.main(sys.argv[2:]))"
)


class Terminal:
    """`pimagic shell` on a pseudo-terminal of the host, as a user runs it."""

    def __init__(self, settings, mode: str) -> None:
        env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir,
                   TERM="xterm-256color")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvpe(sys.executable, [sys.executable, "-c", RUN_CLI, mode, "-w", settings.workspace, "shell"], env)
        self.screen = b""

    def expect(self, text: bytes, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < end, f"no {text!r} on the terminal: {self.screen[-2000:]!r}"
            if readable(self.fd, 0.2):
                try:
                    self.screen += os.read(self.fd, 65536)
                except OSError:
                    break

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.close()

    def close(self) -> int | None:
        """Type `exit`; the CLI's exit status (None if it did not end), then the terminal is gone."""
        try:
            self.type("exit")
            end = time.monotonic() + 20
            while time.monotonic() < end:
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    return os.WEXITSTATUS(status)
                time.sleep(0.2)
            return None
        finally:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self.fd)
            self.fd = None


def probe_tty(settings, docker_client) -> dict:
    """An agent process (the agent's uid, no TTY of its own) looks for the user's terminal."""
    code, out, err = Sandbox(settings, docker_client).exec(["python3", "-c", TTY_PROBE])
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("mode", ["locked", "control"])
def test_agent_process_cannot_open_the_shells_terminal(settings, docker_client, mode):
    with Terminal(settings, mode) as term:
        term.expect(b"/workspace$ ")  # the prompt: the CLI's raw mode flushes anything typed before
        term.type("echo ready-$((6*7))")
        term.expect(b"ready-42")  # allowed use: the shell works on its exclusive terminal
        res = probe_tty(settings, docker_client)
        assert res, "the probe found no process on a terminal"
        if mode == "locked":
            assert set(res.values()) == {"EBUSY"}, f"expected {TTY_LOCK}: {res}"
        else:
            assert "OK" in res.values(), f"control: without the lock the terminal opens: {res}"
        term.type("echo after-$((2+3))")
        term.expect(b"after-5")
        assert term.close() == 0


SPINNER = textwrap.dedent(
    r"""
    import os, time
    # Left behind by an earlier cell: waits for any new terminal and grabs it the moment it appears,
    # trying again and again (runc creates the pts as root, then hands it to the exec's user).
    before = set(os.listdir("/dev/pts"))
    opened, logged = set(), set()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        for name in set(os.listdir("/dev/pts")) - before - opened - {"ptmx"}:
            try:
                os.open("/dev/pts/" + name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as e:
                if (name, e.errno) not in logged:
                    logged.add((name, e.errno))
                    open("/tmp/spinner.log", "a").write(f"{name} {e.errno}\n")
                continue
            opened.add(name)
            open("/tmp/spinner.log", "a").write(f"{name} OPENED\n")
        open("/tmp/spinner.beat", "w").write(str(time.monotonic()))
    """
)


def spinner_log(settings, docker_client) -> str:
    code, out, _ = Sandbox(settings, docker_client).exec(["sh", "-c", "cat /tmp/spinner.log 2>/dev/null; echo"])
    return out.decode()


@pytest.mark.parametrize("mode", ["locked", "control"])
def test_a_process_spinning_on_new_terminals_never_gets_the_shells(settings, docker_client, mode):
    """tty-lock (red-team finding): a process left running polls /dev/pts and opens a new terminal
    the moment runc creates it, before the lock is set; then it reads what the user types. The
    CLI stops every agent process while the terminal is not yet exclusive. Control: no freeze, no
    lock: the spinner opens it."""
    box = Sandbox(settings, docker_client)
    box.start()
    code, _, err = box.exec(["sh", "-c", "cat > /tmp/spin.py; setsid python3 /tmp/spin.py "
                                         ">/dev/null 2>&1 </dev/null & echo ok"], stdin=SPINNER.encode())
    assert code == 0, err
    time.sleep(1.0)
    with Terminal(settings, mode) as term:
        term.expect(b"/workspace$ ")
        term.type("echo ready-$((6*7))")
        term.expect(b"ready-42")  # allowed use: the user's line reaches the shell
        time.sleep(1.0)
        log = spinner_log(settings, docker_client)
        if mode == "locked":
            # (That the agent's processes run again afterwards is test_leash.py's
            # test_sigcont_loops_do_not_undo_the_freeze.)
            assert "OPENED" not in log and "16" in log, f"expected {TTY_LOCK} (EBUSY=16): {log!r}"
        else:
            assert "OPENED" in log, f"control: without freeze and lock the spinner opens it: {log!r}"
        assert term.close() == 0


def test_shell_does_not_run_the_agents_profile_or_rc(settings, docker_client):
    """shell-rc (red-team finding): the home is the agent's; a planted ~/.bash_profile or ~/.bashrc
    would sit between the user and the terminal (a key logger). `pimagic shell` runs neither."""
    box = Sandbox(settings, docker_client)
    box.start()
    plant = "for f in .bash_profile .bash_login .profile .bashrc; do echo 'echo PLANTED-$((40+2))' > ~/$f; done"
    assert box.exec(["sh", "-c", plant])[0] == 0
    with Terminal(settings, "locked") as term:
        term.expect(b"/workspace$ ")
        term.type("echo ready-$((6*7))")
        term.expect(b"ready-42")
        assert b"PLANTED-42" not in term.screen, term.screen[-2000:]
        assert term.close() == 0


def test_plain_exec_output_to_a_terminal_is_stripped(settings):
    """`pimagic shell` with piped input but a terminal for output: the agent's escape sequences
    do not reach the terminal; piped output (the control) stays byte-exact."""
    script = b"printf '\\033]52;c;cGFzdGVk\\007\\033]0;owned\\007visible-%s\\n' $((6*7))\n"
    env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir)
    argv = [sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "shell"]
    r, w = os.pipe()
    os.write(w, script)
    os.close(w)
    with Pty(argv, env, stdin=r) as term:
        os.close(r)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and term.read_for(0.5):
            pass
        screen = term.screen
    assert b"visible-42" in screen, screen[-2000:]
    assert b"\x1b]" not in screen and b"\x07" not in screen, screen[-2000:]
    piped = subprocess.run(argv, input=script, env=env, capture_output=True, timeout=120)
    assert b"\x1b]52;c;cGFzdGVk\x07" in piped.stdout  # control: not a terminal, so byte-exact
