"""Workspace secret masks: `.env`, `.env.*`, `*.pem`, ... are empty read-only bind mounts, empty even
to raw syscalls. The control is the same sandbox with the mask mounts left out: there the same
raw reads, copies and links reach the canaries on the host."""

from __future__ import annotations

import pytest
from secharness import (
    CANARY_ENV,
    CANARY_PEM,
    MASK,
    assert_allowed,
    assert_stopped,
    errno_is,
    leaks,
)


@pytest.fixture(scope="module")
def unmasked(control):
    return control(MASK)


@pytest.mark.parametrize(
    "path, canary",
    [
        pytest.param("/workspace/.env", CANARY_ENV, id="dotenv-raw-syscall"),
        pytest.param("/workspace/server.pem", CANARY_PEM, id="pem-raw-syscall"),
        pytest.param("/proc/self/root/workspace/.env", CANARY_ENV, id="dotenv-raw-proc-self-root"),
    ],
)
def test_masked_files_are_empty_even_to_the_kernel(box, unmasked, path, canary):
    probe = f"data, err = raw_read({path!r}); report(err=err, size=len(data or b''), data=data)"
    assert_stopped(MASK, box.py(probe), lambda r: r.values().get("err") == "OK" and r.values().get("size") == "0",
                   control=unmasked.py(probe), then=leaks(canary))


def test_copy_of_masked_file_is_empty(box, unmasked):
    script = "cp --no-preserve=all /proc/self/root/workspace/server.pem /tmp/k && cat /tmp/k && wc -c < /tmp/k"
    assert_stopped(MASK, box.sh(script), lambda r: r.out.strip() == "0", control=unmasked.sh(script),
                   then=leaks(CANARY_PEM))


def test_hardlink_to_masked_file_crosses_a_mount(box, unmasked):
    probe = """
    r, err = sc("linkat", AT_FDCWD, b"/workspace/.env", AT_FDCWD, b"/workspace/env-copy", 0)
    report(err=errno.errorcode.get(err, "OK"))
    """
    attack = box.py(probe)
    try:
        linked = unmasked.py(probe)
    finally:
        unmasked.sh("rm -f /workspace/env-copy")
    assert_stopped(MASK, attack, errno_is("EXDEV"), control=linked, then=errno_is("OK"))


def test_masked_file_cannot_be_deleted_or_replaced(box, unmasked):
    script = "rm -f .env .env.local; stat -c %s .env .env.local"
    attack = box.sh(script)
    try:
        removed = unmasked.sh(script)
    finally:  # put the control's files back for the cases after this one
        (unmasked.workspace / ".env").write_text(f"OPENAI_API_KEY={CANARY_ENV}\n")
        (unmasked.workspace / ".env.local").write_text(f"X={CANARY_ENV}\n")
    assert_stopped(MASK, attack, lambda r: r.err.count("busy") == 2 and r.out.split() == ["0", "0"],
                   control=removed, then=lambda r: "No such file" in r.err)


def test_twin_masked_file_is_intact_on_the_host(box):
    assert CANARY_ENV in (box.workspace / ".env").read_text()
    res = box.sh("cat README.md && ls -a | grep -c '^.env'")
    assert_allowed(res, MASK, res.out == "hello\n2\n")
