"""Paranoid mode that sticks (issue 11, item 1), through real containers, real pi and `%%pi` cells.

The attack is the user's own tooling undoing the user's choice: a restarted kernel (or a second
notebook of the folder) starting from default settings pushed its policy into the running sandbox,
and the agent's `gh repo list` reached gh. The layer is pimagic.policy: the choice is recorded in
the folder's host-only state dir and what the host pushed into which container beside it; a new
kernel's settings start from the choice, and no push lowers the running sandbox's policy without a
deliberate "off". Controls: the same kernels with those two host-only records removed (the old
behaviour) reach gh; allowed use: a deliberate `%pi paranoid off` does turn it off.

gh never leaves the machine: the sandbox holds no token, so an allowed `gh repo list` stops at
"not logged in" before any request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _support import release_magics
from IPython.core.interactiveshell import InteractiveShell

from pimagic import policy, statedir
from pimagic.config import PimagicSettings, load_settings
from pimagic.magics import PiMagics
from pimagic.scripted_model import call, say
from pimagic.session import PiSession
from pimagic.widgets import settings_panel

LAYER = "paranoid mode recorded host-only per folder (pimagic.policy)"
BLOCKED = "gh-guard: 'gh repo' is blocked"


def new_kernel(settings: PimagicSettings, name: str) -> PiMagics:
    """A new kernel for the folder: settings loaded from scratch (defaults, the environment, no
    %config), its own conversation, registered as the shell's `%pi`."""
    fresh = load_settings(settings.workspace, environ=os.environ, pi_data_dir=settings.pi_data_dir,
                          image=settings.image)
    magics = PiMagics(InteractiveShell.instance(), fresh)
    magics._session = PiSession(fresh, name)
    magics.shell.register_magics(magics)
    return magics


def gh_cell(magics: PiMagics, scripted) -> str:
    """One `%%pi` cell whose scripted model runs `gh repo list`; the cell's text (tool output included)."""
    scripted.push(call("bash", command="gh repo list; echo rc=$?"), say("done"))
    return magics.pi("", "list my repositories")._repr_mimebundle_()["text/plain"]


def status(magics: PiMagics, capsys) -> str:
    capsys.readouterr()
    magics.pi("status")  # this kernel's %pi (two kernels share the test's one IPython shell)
    return capsys.readouterr().out


def forget_records(settings: PimagicSettings) -> None:
    """The control: what pimagic knew before this layer (no host-only record of the choice or the push)."""
    for name in (policy.CHOICE_FILE, policy.APPLIED_FILE):
        (statedir.state_dir(settings) / name).unlink(missing_ok=True)


@pytest.fixture
def kernels():
    made: list[PiMagics] = []
    yield made
    for magics in made:
        release_magics(magics)


@pytest.mark.parametrize("container", ["joined", "new-container"])
def test_paranoid_ticked_in_the_panel_survives_a_kernel_restart(pi_magics, scripted, settings, kernels, capsys,
                                                                 container):
    pi_magics.session.ensure()
    panel = settings_panel(pi_magics)
    panel.paranoid_box.value = True
    assert "kept for this folder" in panel.messages[-1], panel.messages
    if container == "new-container":
        pi_magics.pi("stop")
    release_magics(pi_magics)  # Kernel > Restart: the kernel's objects are gone
    panel.close()
    del panel

    again = new_kernel(settings, "after-restart")
    kernels.append(again)
    assert again.settings.paranoid is True, LAYER  # %config PimagicSettings.paranoid, a new panel
    text = gh_cell(again, scripted)
    assert BLOCKED in text and "rc=126" in text, f"expected {LAYER} to keep gh blocked\n{text[-2000:]}"
    shown = status(again, capsys)
    assert "paranoid mode ON (chosen for this folder with the settings panel" in shown, shown
    assert settings_panel(again).paranoid_box.value is True


def test_control_without_the_records_a_restarted_kernel_turns_it_off(pi_magics, scripted, settings, kernels):
    """The same restart with the host-only records removed: the new kernel's default policy
    reaches the running sandbox and gh runs (the layer, not something else, kept it blocked)."""
    pi_magics.session.ensure()
    settings_panel(pi_magics).paranoid_box.value = True
    code, _, err = pi_magics.session.sandbox.exec(["gh", "repo", "list"])
    assert code == 126 and BLOCKED.encode() in err
    release_magics(pi_magics)
    forget_records(settings)

    again = new_kernel(settings, "control")
    kernels.append(again)
    assert again.settings.paranoid is False
    text = gh_cell(again, scripted)
    assert "gh-guard" not in text and "rc=126" not in text, text[-2000:]


def test_two_notebooks_of_one_folder_do_not_undo_each_others_paranoid_mode(pi_magics, scripted, settings, kernels,
                                                                         capsys):
    a = pi_magics
    b = new_kernel(settings, "notebook-b")  # opened before A ticks: its settings say off
    kernels.append(b)
    assert b.settings.paranoid is False
    a.session.ensure()
    settings_panel(a).paranoid_box.value = True

    text = gh_cell(b, scripted)  # B's pi starts in the running sandbox: it must not push "off"
    assert BLOCKED in text, f"expected {LAYER}: B adopts A's choice\n{text[-2000:]}"
    assert b.settings.paranoid is True
    assert "paranoid mode ON" in status(b, capsys)

    # A %config in B does not undo it either, and says how to (`%config` sets the trait like this).
    b.settings.paranoid = False
    assert "paranoid mode stays ON" in capsys.readouterr().out and b.settings.paranoid is True
    code, _, err = b.session.sandbox.exec(["gh", "repo", "list"])
    assert code == 126 and BLOCKED.encode() in err, LAYER

    # Allowed use: a deliberate `%pi paranoid off` (in either notebook) turns it off for the folder.
    b.pi("paranoid off")
    assert "paranoid mode off" in capsys.readouterr().out
    code, out, err = b.session.sandbox.exec(["gh", "repo", "list"])
    assert code != 126 and b"gh-guard" not in err, (out + err).decode()
    assert "paranoid mode off" in status(a, capsys)  # A follows the folder's choice
    assert a.settings.paranoid is False


def test_a_joining_kernel_keeps_the_running_sandboxs_stronger_policy_and_says_so(pi_magics, scripted, settings,
                                                                                kernels, capsys):
    """Paranoid from a kernel's own %config (not a folder choice): another notebook joining the
    running sandbox with its default keeps it on, in the cell and in `%pi status`."""
    a = pi_magics
    a.settings.paranoid = True  # a's own %config: nothing recorded for the folder
    a.session.ensure()
    assert policy.read_choice(settings) is None
    b = new_kernel(settings, "notebook-b")
    kernels.append(b)
    assert b.settings.paranoid is False

    text = gh_cell(b, scripted)
    assert BLOCKED in text, f"expected {LAYER}: the running sandbox's policy kept\n{text[-2000:]}"
    assert "kept paranoid mode ON in the running sandbox" in text and "%pi paranoid off" in text
    shown = status(b, capsys)
    assert "paranoid mode off; the running sandbox has it ON" in shown, shown

    forget_records(settings)  # control: with no record of what the host pushed, B's join lowers it
    b.session.close()
    gh_cell(b, scripted)
    code, _, err = b.session.sandbox.exec(["gh", "repo", "list"])
    assert code != 126 and b"gh-guard" not in err


def test_the_record_is_host_only_and_the_agent_cannot_forge_it(pi_magics, scripted, settings):
    """The agent cannot reach the records (outside every mount), and what it writes into its own
    dirs does not change the host's view."""
    pi_magics.session.ensure()
    settings_panel(pi_magics).paranoid_box.value = True
    state = statedir.state_dir(settings)
    assert (state / policy.CHOICE_FILE).is_file() and (state / policy.APPLIED_FILE).is_file()
    assert not Path(state / policy.CHOICE_FILE).is_relative_to(settings.workspace_path)
    forged = '{"paranoid": false, "by": "the agent", "at": 9999999999}'
    scripted.push(call("bash", command=(
        f"echo '{forged}' > /workspace/paranoid.json; echo '{forged}' > ~/.pi/agent/paranoid.json; "
        f"echo '{forged}' > ~/.pi/agent/../paranoid.json; ls /run/pimagic; echo done")), say("done"))
    pi_magics.pi("", "forge it")
    assert policy.read_choice(settings).paranoid is True, LAYER
    assert policy.status(settings, None).startswith("paranoid mode ON"), LAYER
