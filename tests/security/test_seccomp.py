"""The seccomp profile (pimagic/seccomp.py): raw syscalls (no libc wrapper, no LD_PRELOAD).

Two kinds of case, each against controls started through the same `Sandbox.start` path:
- seccomp alone: syscalls an unprivileged process may make (user namespaces, io_uring, keyctl,
  ptrace of its own uid...), as the agent's uid. Refused (EPERM; clone3 ENOSYS) here; the control
  with `seccomp=unconfined` gets past them (or fails otherwise, e.g. perf_event_paranoid's EACCES).
- seccomp AND dropped capabilities: mount, the new mount API, pivot_root, setns, namespaces,
  bpf, module loading, open_by_handle_at. For the agent's uid they need a capability it never
  has, so they are played as uid 0 (what the setuid vault runs as). Each single-layer control
  still gets EPERM (the other layer holds alone); the control without both lets them through.
"""

from __future__ import annotations

import json

import pytest
from secharness import AGENT, CAPS, SECCOMP, assert_allowed, assert_stopped, errno_is

from pimagic import seccomp

CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x00020000, 0x40000000, 17
ROOT = "0:0"

IOV = """
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(64)
iov = Iov(ctypes.cast(buf, ctypes.c_void_p), 64)
"""

SECCOMP_ONLY = [
    pytest.param(f"sc('unshare', {CLONE_NEWUSER})", "EPERM", id="unshare-user-namespace"),
    pytest.param(f"sc('unshare', {CLONE_NEWNS | CLONE_NEWUSER})", "EPERM", id="unshare-mount-namespace"),
    pytest.param(f"sc('clone', {CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0)", "EPERM", id="clone-newuser"),
    pytest.param("sc('clone3', ctypes.create_string_buffer(88), 88)", "ENOSYS", id="clone3-hidden-flags"),
    pytest.param("sc('ptrace', 16, int(open('/tmp/sleeper').read()), 0, 0)", "EPERM", id="ptrace-attach-own-uid"),
    pytest.param("sc('ptrace', 0, 0, 0, 0)", "EPERM", id="ptrace-traceme"),
    pytest.param("sc('process_vm_readv', os.getpid(), ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)", "EPERM",
                 id="process-vm-readv"),
    pytest.param("sc('kcmp', os.getpid(), os.getpid(), 0, 0, 0)", "EPERM", id="kcmp"),
    pytest.param("sc('pidfd_getfd', sc('pidfd_open', os.getpid(), 0)[0], 0, 0)", "EPERM", id="pidfd-getfd"),
    pytest.param("sc('io_uring_setup', 4, ctypes.create_string_buffer(120))", "EPERM", id="io-uring-setup"),
    pytest.param("sc('keyctl', 0, -3, 0)", "EPERM", id="keyctl-session-keyring"),
    pytest.param("sc('userfaultfd', 1)", "EPERM", id="userfaultfd-user-mode"),
    pytest.param("sc('perf_event_open', ctypes.create_string_buffer(128), 0, -1, -1, 0)", "EPERM",
                 id="perf-event-open"),
    pytest.param("sc('personality', 0x0040000)", "EPERM", id="personality-no-aslr"),
]

BPF_MAP = "struct.pack('IIII', 2, 4, 4, 1) + bytes(112)"  # BPF_MAP_TYPE_ARRAY, 4-byte keys and values, 1 entry
FILE_HANDLE = "struct.pack('Ii', 8, 1) + bytes(8)"  # struct file_handle: 8 bytes of type 1 (the shocker probe)
BOTH = [
    pytest.param("sc('mount', b'none', b'/tmp', b'tmpfs', 0, 0)", id="mount-tmpfs"),
    pytest.param("sc('umount2', b'/workspace/.env', 2)", id="umount-secret-mask"),
    pytest.param("sc('fsopen', b'tmpfs', 0)", id="fsopen-new-mount-api"),
    pytest.param("sc('pivot_root', b'/tmp', b'/tmp')", id="pivot-root"),
    pytest.param("sc('setns', os.open('/proc/self/ns/mnt', os.O_RDONLY), 0)", id="setns-mnt"),
    pytest.param(f"sc('clone', {CLONE_NEWNET | SIGCHLD}, 0, 0, 0, 0)", id="clone-newnet"),
    pytest.param(f"sc('bpf', 0, ctypes.create_string_buffer({BPF_MAP}, 128), 128)", id="bpf-map-create"),
    pytest.param("sc('init_module', ctypes.create_string_buffer(64), 64, b'')", id="init-module"),
    pytest.param(f"sc('open_by_handle_at', -100, ctypes.create_string_buffer({FILE_HANDLE}), 0)",
                 id="open-by-handle-at-shocker"),
]

# A cloned child returns 0 in the child: it leaves at once, the parent reports.
PROBE = """
import struct
{iov}
r, err = {call}
if r == 0 and "clone" in {call!r}:
    os._exit(0)
report(r=r, err=errno.errorcode.get(err, err))
"""

# Where the mount-family call could succeed (the control with neither layer), it runs in a mount
# namespace of its own, so the control's root stays as it was for the next case.
PRIVATE = f"""
private, _ = sc("unshare", {CLONE_NEWNS})
"""


def probe(call: str, *, private: bool = False) -> str:
    return (PRIVATE if private else "") + PROBE.format(call=call, iov=IOV)


def sleeper(b):
    b.sh("setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > /tmp/sleeper")
    return b


@pytest.fixture(scope="module")
def no_seccomp(control):
    return sleeper(control(SECCOMP))


@pytest.fixture(scope="module")
def seccomp_box(box):
    return sleeper(box)


@pytest.mark.parametrize("call, expected", SECCOMP_ONLY)
def test_syscall_refused_by_seccomp(seccomp_box, no_seccomp, call, expected):
    attack, unconfined = seccomp_box.py(probe(call)), no_seccomp.py(probe(call))
    assert_stopped(SECCOMP, attack, errno_is(expected), control=unconfined)


@pytest.mark.parametrize("call", BOTH)
def test_syscall_refused_by_seccomp_and_by_the_dropped_capabilities(box, control, call):
    """As uid 0: EPERM here, EPERM without seccomp (caps hold), EPERM with the capabilities kept
    (seccomp holds), and the call reaches the kernel without both."""
    attack = box.py(probe(call, private=True), user=ROOT)
    caps_only = control(SECCOMP).py(probe(call, private=True), user=ROOT)
    seccomp_only = control(CAPS).py(probe(call, private=True), user=ROOT)
    neither = control(SECCOMP, CAPS).py(probe(call, private=True), user=ROOT)
    assert_stopped(SECCOMP, attack, errno_is("EPERM"), control=neither)
    if "init_module" in call and caps_only.values().get("err") == "ENOSYS":
        # A kernel built without module loading answers ENOSYS before any capability check.
        assert neither.values().get("err") == "ENOSYS", neither
    else:
        assert_stopped(CAPS, caps_only, errno_is("EPERM"), control=neither)  # seccomp removed: caps hold
    assert_stopped(SECCOMP, seccomp_only, errno_is("EPERM"), control=neither)  # caps kept: seccomp holds
    assert box.py(probe(call)).values().get("err") == "EPERM"  # and as the agent's uid


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


@pytest.mark.parametrize(
    "script, expect",
    [
        pytest.param("pi --version", "1.5.2", id="pi"),
        pytest.param("cd /tmp && git init -q r && cd r && git -c user.name=a -c user.email=a@b commit -q "
                     "--allow-empty -m x && git log --oneline | wc -l", "1", id="git"),
        pytest.param("gh --version | head -1 | cut -d' ' -f1-2", "gh version", id="gh"),
        pytest.param("python3 -c 'import subprocess,threading,multiprocessing as m; p=m.Pool(2); "
                     "print(sum(p.map(abs,[-1,-2])))'", "3", id="python3-multiprocessing"),
        pytest.param("node -e 'const {Worker}=require(\"worker_threads\");new Worker(\"1\",{eval:true})"
                     ".on(\"exit\",()=>console.log(\"ok\"))'", "ok", id="node-worker"),
        pytest.param("bash -c 'echo $(( $(seq 10 | paste -sd+) ))' | cat", "55", id="bash-pipes"),
        pytest.param("rg -l hello /workspace", "README.md", id="ripgrep"),
    ],
)
def test_twin_tools_work_under_the_profile(box, script, expect):
    res = box.sh(script)
    assert_allowed(res, SECCOMP, res.code == 0 and expect in res.out, f"({script})")


def test_profile_denies_what_it_documents():
    prof = seccomp.profile("x86_64")
    allowed = {n for rule in prof["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
               for n in rule["names"]}
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["architectures"] == ["SCMP_ARCH_X86_64"]
    assert not allowed & set(seccomp.DENIED)
    clone = next(r for r in prof["syscalls"] if r["names"] == ["clone"])
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["value"] & 0x10000000
    assert json.loads(seccomp.security_opt("x86_64")[0].removeprefix("seccomp=")) == prof


def test_sandbox_runs_with_the_profile(box, no_seccomp):
    """The filter is installed for the agent's processes (Seccomp: 2), no-new-privileges is off
    (the setuid vault needs it); the control has no filter."""
    inspect = box.sandbox.running().attrs["HostConfig"]
    assert any(o.startswith("seccomp={") for o in inspect["SecurityOpt"])
    assert "no-new-privileges" not in " ".join(inspect["SecurityOpt"])
    status = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"
    res = box.sh(status, user=AGENT)
    assert_allowed(res, SECCOMP, "Seccomp:\t2" in res.out and "NoNewPrivs:\t0" in res.out)
    assert "Seccomp:\t0" in no_seccomp.sh(status).out
