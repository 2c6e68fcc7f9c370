"""Privilege escalation: setuid, capabilities, namespaces, mounts, ptrace and the rarer
kernel interfaces. Raw syscalls (no libc wrapper, no LD_PRELOAD) as the agent's uid.

Each syscall case picks an attack that needs no capability on this kernel (io_uring,
keyctl, ptrace of an own-uid process, user namespaces...), so the refusal can only come
from the seccomp profile; a control container with Docker's default profile shows it."""

from __future__ import annotations

import pytest
from secharness import CAPS, SECCOMP, assert_allowed, assert_stopped

from pimagic import seccomp

CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x00020000, 0x40000000, 17

SYSCALL_ATTACKS = [
    pytest.param("unshare", f"sc('unshare', {CLONE_NEWUSER})", "EPERM", id="unshare-user-namespace"),
    pytest.param("unshare", f"sc('unshare', {CLONE_NEWNS | CLONE_NEWUSER})", "EPERM", id="unshare-mount-namespace"),
    pytest.param("clone", f"sc('clone', {CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0)", "EPERM", id="clone-newuser"),
    pytest.param("clone", f"sc('clone', {CLONE_NEWNET | SIGCHLD}, 0, 0, 0, 0)", "EPERM", id="clone-newnet"),
    pytest.param("clone3", "sc('clone3', ctypes.create_string_buffer(88), 88)", "ENOSYS", id="clone3-hidden-flags"),
    pytest.param("setns", "sc('setns', os.open('/proc/self/ns/mnt', os.O_RDONLY), 0)", "EPERM", id="setns-mnt"),
    pytest.param("mount", "sc('mount', b'none', b'/tmp', b'tmpfs', 0, 0)", "EPERM", id="mount-tmpfs"),
    pytest.param("umount2", "sc('umount2', b'/workspace/.env', 2)", "EPERM", id="umount-secret-mask"),
    pytest.param("fsopen", "sc('fsopen', b'tmpfs', 0)", "EPERM", id="fsopen-new-mount-api"),
    pytest.param("pivot_root", "sc('pivot_root', b'/tmp', b'/tmp')", "EPERM", id="pivot-root"),
    pytest.param("ptrace", "sc('ptrace', 16, int(open('/tmp/sleeper').read()), 0, 0)", "EPERM",
                 id="ptrace-attach-own-uid"),
    pytest.param("ptrace", "sc('ptrace', 0, 0, 0, 0)", "EPERM", id="ptrace-traceme"),
    pytest.param("process_vm_readv", "sc('process_vm_readv', os.getpid(), 0, 0, 0, 0, 0)", "EPERM",
                 id="process-vm-readv"),
    pytest.param("io_uring_setup", "sc('io_uring_setup', 4, ctypes.create_string_buffer(120))", "EPERM",
                 id="io-uring-setup"),
    pytest.param("keyctl", "sc('keyctl', 0, -3, 0)", "EPERM", id="keyctl-session-keyring"),
    pytest.param("userfaultfd", "sc('userfaultfd', 1)", "EPERM", id="userfaultfd-user-mode"),
    pytest.param("perf_event_open", "sc('perf_event_open', ctypes.create_string_buffer(128), 0, -1, -1, 0)",
                 "EPERM", id="perf-event-open"),
    pytest.param("bpf", "sc('bpf', 0, ctypes.create_string_buffer(128), 128)", "EPERM", id="bpf"),
    pytest.param("personality", "sc('personality', 0x0040000)", "EPERM", id="personality-no-aslr"),
    pytest.param("init_module", "sc('init_module', 0, 0, b'')", "EPERM", id="init-module"),
    pytest.param("open_by_handle_at", "sc('open_by_handle_at', -100, ctypes.create_string_buffer(64), 0)",
                 "EPERM", id="open-by-handle-at-shocker"),
]

PROBE = """
try:
    r, err = {call}
except Exception as e:
    r, err = -1, 0
    print("exc=" + repr(e))
report(r=r, err=errno.errorcode.get(err, err))
"""


@pytest.fixture(scope="module")
def sleeper(box):
    box.sh("setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > /tmp/sleeper")
    yield
    box.sh("kill $(cat /tmp/sleeper)")


@pytest.mark.parametrize("name, call, expected", SYSCALL_ATTACKS)
def test_syscall_refused_by_seccomp(box, sleeper, name, call, expected):
    assert name not in seccomp.ALLOWED or name == "clone"
    res = box.py(PROBE.format(call=call))
    assert_stopped(res, SECCOMP, res.values().get("err") == expected, f"(wanted {expected})")


def test_control_dockers_default_profile_allows_what_ours_refuses(docker_client, sandbox_image):
    """Without our profile (Docker's default, caps dropped) these succeed: ours is the stopper."""
    from secharness import RAW

    code = RAW + (
        "\nfor name, call in [('io_uring_setup', lambda: sc('io_uring_setup', 4, ctypes.create_string_buffer(120))),"
        " ('perf_event_open', lambda: sc('perf_event_open', ctypes.create_string_buffer(128), 0, -1, -1, 0)),"
        " ('ptrace', lambda: sc('ptrace', 0, 0, 0, 0))]:\n"
        "    r, err = call(); print(f'{name}={err}')\n"
    )
    out = docker_client.containers.run(
        sandbox_image, ["python3", "-c", code], remove=True, cap_drop=["ALL"], network_mode="none",
        user="1000:1000", read_only=True,
    ).decode()
    assert "io_uring_setup=0" in out and "ptrace=0" in out, out


def test_twin_ordinary_clone_and_personality_query_work(box):
    res = box.py(
        """
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()
        r, err = sc("personality", ctypes.c_ulong(0xFFFFFFFF))
        report(child=os.waitstatus_to_exitcode(status), persona=r, err=err)
        """
    )
    assert_allowed(res, SECCOMP, res.values() == {"child": "7", "persona": "0", "err": "0"})


def test_no_capabilities_even_for_the_setuid_vault(box):
    """capability-sets-empty: the vault gets euid 0, never a capability (bounding set empty)."""
    res = box.sh("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status")
    assert_stopped(res, CAPS, res.out.count("0000000000000000") == 5)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("python3 -c 'import os; os.setuid(0)'", id="setuid-0"),
        pytest.param("touch /workspace/x && chown 0:0 /workspace/x", id="chown-to-root"),
        pytest.param("python3 -c 'import os; os.setgroups([0])'", id="setgroups-root"),
    ],
)
def test_identity_changes_need_capabilities(box, script):
    res = box.sh(script)
    assert_stopped(res, CAPS, res.code != 0 and ("Operation not permitted" in res.text or "EPERM" in res.text))


def test_setuid_file_in_workspace_grants_nothing(box):
    """A setuid binary the agent makes is owned by the agent: setuid to itself."""
    res = box.sh("cp /usr/bin/id /workspace/myid && chmod u+s /workspace/myid && /workspace/myid -u; rm -f myid")
    assert_stopped(res, CAPS, res.out.strip() not in ("0", ""), "(euid must stay the agent's)")


def test_seccomp_filter_is_installed(box):
    res = box.sh("grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert_allowed(res, SECCOMP, "Seccomp:\t2" in res.out and "NoNewPrivs:\t0" in res.out)
