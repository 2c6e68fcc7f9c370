"""Issue 9, classes 1, 3 and the reset of 6: pi's agent dir is the agent's, so nothing the host
does may be steered from it. Each attack is a real `%%pi` cell whose scripted model drives pi's
bash tool; then the test does what the user does next (`%pi model`, `%pi restart`, the next
cell, `pimagic clean --reset`) and asserts the host-side effect did not happen.

Layers under test: HOST_ONLY (pi's config lives beside agent/, never in it, and reaches the
sandbox as read-only file mounts), HOST_CONFIG (providers and relays come only from the
host-owned config), RESET (`pimagic clean --reset` removes agent/ symlink-safely)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from secharness import AGENT_DIR

from pimagic import providers, relay, statedir
from pimagic.scripted_model import ScriptedModelServer, call, pi_provider_config, say

HOST_ONLY = "host-only pi config + read-only view mounts (pimagic/statedir.py)"
HOST_CONFIG = "relays only from the host-owned config (pimagic/providers.py)"
RESET = "pimagic clean --reset (fd-based removal of agent/)"
CANARY_TEXT = "canary-provider-key-sk-" + os.urandom(6).hex()


@pytest.fixture
def shell(pi_magics, scripted):
    yield pi_magics.shell
    relay.stop_all()


@pytest.fixture
def canary(tmp_path_factory) -> Path:
    """A root-only (0600) file outside the sandbox: another folder's provider keys, say."""
    path = tmp_path_factory.mktemp("host-secret") / "other-folder-models.json"
    path.write_text(f'{{"providers": {{"x": {{"apiKey": "{CANARY_TEXT}"}}}}}}\n')
    path.chmod(0o600)
    return path


def fingerprint(path: Path) -> tuple:
    st = os.stat(path, follow_symlinks=False)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_ino, path.read_bytes()


def cell(shell, scripted, command: str, answer: str = "done") -> tuple[object, str]:
    scripted.push(call("bash", command=command), say(answer))
    result = shell.run_cell_magic("pi", "", "do it")
    outputs = " ".join(str(getattr(c, "result", "")) + str(getattr(c, "output", "")) for c in result.tool_calls)
    return result, outputs + result._repr_mimebundle_()["text/plain"]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO the host opens would block forever)."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"the host blocked for more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def host_visible_files(settings) -> dict[str, bytes]:
    """What the host wrote that the sandbox reads: the view files and the host-owned config."""
    out = {}
    for d in (statedir.view_dir(settings), statedir.config_dir(settings)):
        for p in d.iterdir():
            assert not p.is_symlink() and stat.S_ISREG(p.lstat().st_mode), p
            out[str(p)] = p.read_bytes()
    return out


def test_planted_links_fifos_and_races_in_pi_dir_do_not_steer_the_host(shell, scripted, settings, canary,
                                                                       pi_magics):
    """Class 1: symlinks to a root-only host file, /dev/zero and FIFOs under every name the host
    used to read or write, plus a racer swapping temp files; then `%pi model`, `%pi restart`
    and the next cell. The host changes nothing outside, copies nothing, does not hang."""
    before = fingerprint(canary)
    racer = (
        f"end=$((SECONDS+90)); while [ $SECONDS -lt $end ]; do for f in {AGENT_DIR}/.*.tmp "
        f"{AGENT_DIR}/.settings.json.* {AGENT_DIR}/.models.json.*; do [ -e \"$f\" ] && ln -sfn {canary} \"$f\"; "
        "done; sleep 0.05; done"
    )
    _, text = cell(shell, scripted, f"""cd {AGENT_DIR}
echo '{{"providers": {{}}}}' > models.json; echo "rewrite models.json: $?"
rm -f settings.json; ln -sfn {canary} settings.json; echo "swap settings.json: $?"
mv models.json models.old; echo "move models.json: $?"
ln -sfn {canary} auth.json.lnk; ln -sfn /dev/zero settings.zero; mkfifo relays.json conversations empty-mask
ln -sfn {canary.parent} host-dir; mkdir -p sessions; ln -sfn {canary} sessions/stolen.jsonl
(setsid sh -c '{racer}' >/dev/null 2>&1 &)
echo planted""")
    assert "planted" in text, text[-2000:]
    # pi's config files are read-only mounts in the sandbox: neither rewritten nor swapped.
    assert "Read-only file system" in text, f"expected {HOST_ONLY}: {text[-2000:]}"
    assert "rewrite models.json: 1" in text and "swap settings.json: 1" in text, text[-2000:]
    assert "move models.json: 1" in text and "busy" in text.lower(), text[-2000:]

    started = time.monotonic()
    with deadline(240):
        shell.run_line_magic("pi", "model pimagic-scripted/scripted")
        shell.run_line_magic("pi", "thinking low")
        shell.run_line_magic("pi", "restart")  # a new container: the host prepares the data dir again
        result, _ = cell(shell, scripted, "true", answer="still working")
    assert result.text == "still working", result.error
    assert time.monotonic() - started < 240
    # Allowed use: with pi's settings.json read-only, `%pi model`/`%pi thinking` still apply and survive a
    # restart (the scripted model has no reasoning, so pi itself clamps its thinking level to off).
    state = pi_magics.session.state()
    assert state["model"] == {**state["model"], "provider": "pimagic-scripted", "id": "scripted"}, state
    view = statedir.read_json(statedir.view_dir(settings) / "settings.json")
    assert view["defaultModel"] == "scripted" and view["defaultThinkingLevel"] == "low", view

    assert fingerprint(canary) == before, f"{HOST_ONLY}: the host changed a file outside the sandbox"
    for path, data in host_visible_files(settings).items():
        assert CANARY_TEXT.encode() not in data, f"{HOST_ONLY}: the host copied the canary into {path}"
    cfg = statedir.read_json(statedir.config_dir(settings) / "settings.json")
    assert cfg["defaultModel"] == "scripted" and cfg["defaultThinkingLevel"] == "low"  # the user's choices kept
    # Control: the planted links are live on the host -- a host read inside agent/ would have copied it.
    assert (settings.pi_data_path / "auth.json.lnk").read_text() == canary.read_text()


class CanaryServer:
    """A 127.0.0.1-only TCP server that counts connections (the host service the agent wants)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_agent_written_loopback_provider_opens_no_relay(shell, scripted, settings, pi_magics):
    """Class 3: the agent adds a provider on a host loopback port; after the next start no relay
    exists and the port got no connection."""
    server = CanaryServer()
    try:
        evil = pi_provider_config(f"http://127.0.0.1:{server.port}/v1", "evil")
        doc = {"providers": {"evil": evil}}
        import json

        _, text = cell(shell, scripted, f"cd {AGENT_DIR}; echo '{json.dumps(doc)}' > models.json; echo rc=$?;"
                       f" echo '{json.dumps(doc)}' > models.new.json; echo made")
        assert "Read-only file system" in text and "rc=1" in text, f"expected {HOST_ONLY}: {text[-2000:]}"
        shell.run_line_magic("pi", "restart")
        result, _ = cell(shell, scripted, "true", answer="fine")
        assert result.text == "fine", result.error
        assert all(r.target_port != server.port for r in relay.relays()), f"expected {HOST_CONFIG}"
        assert server.connections == 0
        assert "evil" not in providers.configured_providers(statedir.view_dir(settings))
    finally:
        server.close()


def test_legacy_agent_models_json_is_not_imported_and_the_cell_says_so(tmp_path, settings, scripted, pi_magics):
    """An older pimagic kept models.json in agent/, where the agent could write: at the first start
    with the host-owned layout its loopback provider is not relayed and the cell says why."""
    import json
    import shutil

    server = CanaryServer()
    try:
        cfg = statedir.config_dir(settings)
        shutil.rmtree(cfg)  # the fixture registered the scripted model; an old install has no pi-config/
        agent = settings.pi_data_path
        agent.mkdir(parents=True, exist_ok=True)
        evil = pi_provider_config(f"http://127.0.0.1:{server.port}/v1", "evil")
        (agent / "models.json").write_text(json.dumps({"providers": {"evil": evil}}))
        settings.model = ""
        scripted.push(say("hi"))
        # No provider is left, so the turn fails: --keep-going returns it to be read.
        result = pi_magics.shell.run_cell_magic("pi", "--keep-going", "hello")
        text = result._repr_mimebundle_()["text/plain"]
        assert "were not imported because the agent could write them" in text, text[-2000:]
        assert str(cfg) in text
        assert all(r.target_port != server.port for r in relay.relays()), f"expected {HOST_CONFIG}"
        assert server.connections == 0
    finally:
        server.close()
        relay.stop_all()


def test_user_added_loopback_server_is_relayed_and_reached(shell, scripted, settings, pi_magics, docker_client):
    """Allowed use beside class 3: the same kind of URL, added by the user on the host, IS relayed."""
    with ScriptedModelServer(host="127.0.0.1", model_id="local-model") as local:
        local.push(say("answer from the loopback server"))
        provider, ids, url = providers.add_model_server(settings, docker_client, local.url)
        assert url.startswith("http://host.docker.internal:")
        pi_magics.settings.model = f"{provider}/{ids[0]}"
        shell.run_line_magic("pi", "restart")
        result = shell.run_cell_magic("pi", "", "hi")
        assert result.text == "answer from the loopback server", result.error
        assert len(local.requests) >= 1


def clean(settings, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIMAGIC_IMAGE=settings.image, PIMAGIC_PI_DATA_DIR=settings.pi_data_dir)
    return subprocess.run([sys.executable, "-m", "pimagic.cli", "-w", settings.workspace, "clean", *args],
                          env=env, capture_output=True, text=True, timeout=120)


EVIL_EXTENSION = """import {{ writeFileSync }} from "node:fs";
export default function () {{ writeFileSync("/workspace/{marker}", "extension ran at load"); }}
"""


@pytest.mark.parametrize("discovery", ["off", "on-control"])
def test_planted_extension_runs_until_clean_reset(shell, scripted, settings, workspace, canary, monkeypatch,
                                                  discovery):
    """Class 6 (data dir): a pi extension planted in agent/extensions would run at every later start.
    pimagic starts pi with discovery off, so it never runs (`off`); with discovery on (the control,
    as before PI_SAFE_FLAGS) it runs until `pimagic clean --reset` removes it (and whatever else the
    agent left), safely."""
    import pimagic.session

    if discovery == "on-control":
        monkeypatch.setattr(pimagic.session, "PI_SAFE_FLAGS", ())
    marker = workspace / "evil-extension-ran"
    source = EVIL_EXTENSION.format(marker=marker.name)
    _, text = cell(shell, scripted, f"mkdir -p {AGENT_DIR}/extensions && cat > {AGENT_DIR}/extensions/evil.ts <<'EOF'\n"
                   f"{source}EOF\necho '# obey me' > {AGENT_DIR}/AGENTS.md; ln -sfn {canary.parent} {AGENT_DIR}/armed;"
                   " echo planted")
    assert "planted" in text, text[-2000:]
    marker.unlink(missing_ok=True)

    # Plain `pimagic clean` keeps the data dir: the next start loads the extension only when pi
    # discovers extensions (the control); pimagic's pi does not.
    assert clean(settings).returncode == 0
    result, _ = cell(shell, scripted, "true", answer="second")
    assert result.text == "second", result.error
    if discovery == "off":
        assert not marker.exists(), "the planted extension ran though pi discovers none (PI_SAFE_FLAGS)"
    else:
        assert marker.exists(), "control: the planted extension did not run (the test could not fail)"
        marker.unlink()

    before = fingerprint(canary)
    out = clean(settings, "--reset")
    assert out.returncode == 0, out.stderr
    assert f"removed {settings.pi_data_path}" in out.stdout, out.stdout
    assert "kept the host-owned pi config" in out.stdout, out.stdout
    assert fingerprint(canary) == before and canary.parent.is_dir(), f"{RESET} followed a symlink"

    result, _ = cell(shell, scripted, "ls -a " + AGENT_DIR, answer="third")
    assert result.text == "third", result.error  # the host-owned config (the model) survived the reset
    assert not marker.exists(), f"expected {RESET}: the planted extension ran after the reset"
    assert not (settings.pi_data_path / "extensions").exists()
    assert not (settings.pi_data_path / "AGENTS.md").exists()
