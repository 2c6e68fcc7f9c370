"""Dropped capabilities (cap_drop=ALL): uid 0 in the sandbox (what the setuid vault runs as, and
the idle supervisor) holds no capability, so it cannot chown, change identity, read past file
modes or signal the agent's processes. Played as uid 0; the control keeps the capabilities
(secharness.KEPT_CAPS) and is otherwise started the same way, seccomp profile included.

For the agent's own uid the capability set is empty whatever cap_drop says (a non-root exec gets
none): identity changes fail there on uid alone, which no control can take away."""

from __future__ import annotations

import pytest
from secharness import CAPS, LIB, assert_allowed, assert_stopped, says

ROOT = "0:0"
DENIED = "Operation not permitted"
ESCALATION_BINARIES = "su mount umount passwd chsh chfn chage gpasswd newgrp login nsenter unshare setpriv".split()
SETUID_OWNER = "a setuid bit grants its file owner's uid only (the agent owns what it makes)"
IMAGE = "the image ships no escalation programs, the vault is its only setuid file"


@pytest.fixture(scope="module")
def caps_kept(control):
    return control(CAPS)


def test_capability_sets_are_empty_for_uid_0(box, caps_kept):
    """capability-sets-empty: the bounding set is empty, so setuid root (the vault) gets euid 0 only."""
    script = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status"
    attack, kept = box.sh(script, user=ROOT), caps_kept.sh(script, user=ROOT)
    assert_stopped(CAPS, attack, lambda r: r.out.count("0000000000000000") == 5, control=kept,
                   then=lambda r: "CapEff:\t0000000000000000" not in r.out)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("touch /tmp/f && chown 4321:4321 /tmp/f && echo chowned", id="chown-to-another-uid"),
        pytest.param("python3 -c 'import os; os.setgroups([0, 4321]); print(\"setgroups ok\")'", id="setgroups"),
        pytest.param("python3 -c 'import os; os.setuid(4321); print(\"setuid ok\")'", id="setuid-to-another-uid"),
        pytest.param("kill -STOP $(cat /tmp/agent-sleeper) && echo stopped && kill -CONT $(cat /tmp/agent-sleeper)",
                     id="signal-the-agents-process"),
    ],
)
def test_uid_0_without_capabilities_changes_nothing(box, caps_kept, script):
    for b in (box, caps_kept):
        b.sh("[ -s /tmp/agent-sleeper ] || { setsid sleep 300 </dev/null >/dev/null 2>&1 & "
             "echo $! > /tmp/agent-sleeper; }")
    attack, kept = box.sh(script, user=ROOT), caps_kept.sh(script, user=ROOT)
    assert_stopped(CAPS, attack, lambda r: r.code != 0 and DENIED in r.text, control=kept,
                   then=lambda r: r.code == 0)


def test_uid_0_cannot_read_past_file_modes(box, caps_kept):
    """DAC: a file of the agent's, mode 0400, is not readable to a uid 0 without CAP_DAC_OVERRIDE."""
    plant = "echo agent-private > /tmp/private && chmod 0400 /tmp/private"
    box.sh(plant), caps_kept.sh(plant)
    attack, kept = box.sh("cat /tmp/private", user=ROOT), caps_kept.sh("cat /tmp/private", user=ROOT)
    assert_stopped(CAPS, attack, says("Permission denied"), control=kept, then=says("agent-private"))


def test_twin_uid_0_still_does_its_own_maintenance(box):
    """put-secret writes root's own 0700 tmpfs without any capability: file ownership suffices."""
    res = box.sh(f"echo x | {LIB}/put-secret twin && ls -l /run/pimagic/twin && rm /run/pimagic/twin", user=ROOT)
    assert_allowed(res, CAPS, res.code == 0 and "-r-------- 1 root root" in res.out)


def test_setuid_file_in_workspace_grants_nothing(box):
    """A setuid binary the agent makes is owned by the agent: setuid to itself. No control: this is
    the kernel's rule for setuid bits, nothing pimagic could switch off."""
    res = box.sh("cp /usr/bin/id /workspace/myid && chmod u+s /workspace/myid && /workspace/myid -u; rm -f myid")
    assert_stopped(SETUID_OWNER, res, lambda r: r.out.strip() not in ("0", ""),
                   no_control="kernel semantics: a setuid bit names the file's owner, the agent")


def test_escalation_binaries_are_gone(box):
    names = " ".join(ESCALATION_BINARIES)
    res = box.sh(f"for b in {names}; do for d in /bin /usr/bin /sbin /usr/sbin /usr/local/bin; do "
                 f'[ -e "$d/$b" ] && echo "$d/$b"; done; done; true')
    assert_stopped(IMAGE, res, lambda r: r.code == 0 and r.out == "",
                   no_control="image shape: a control would be another image with these programs put back")


def test_vault_is_the_only_setuid_or_setgid_file(box):
    res = box.sh("find / -xdev -perm /6000 2>/dev/null", user=ROOT)
    assert res.out.split() == [f"{LIB}/gh-vault"], res
    res = box.sh(f"stat -c '%a %U' {LIB}/gh-vault {LIB}/gh-real; readlink -f $(command -v gh)")
    assert res.out.split() == ["4755", "root", "711", "root", f"{LIB}/gh-vault"], res


def test_image_records_the_pi_version(box, docker_client):
    from pimagic.image import pi_version

    image = docker_client.images.get(box.sandbox.settings.image)
    assert image.labels["org.pimagic.pi-version"] == pi_version()
