"""The run options without Docker: `hardening.container_kwargs` is pure, the hashes cover what
they say, `Sandbox.status` tells a stale container from the settings alone (no walk, nothing
created), `adjust` (the security tests' control seam) is hashed, and Docker's errors are
translated at the sandbox boundary."""

from __future__ import annotations

import docker.errors
import pytest
import requests.exceptions

from pimagic import hardening
from pimagic.config import load_settings
from pimagic.errors import DockerUnavailableError, SandboxError
from pimagic.hardening import LABEL_OPTIONS, LABEL_RUN_CONFIG
from pimagic.sandbox import ContainerState, Sandbox


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path / "data"))
    (tmp_path / "ws" / ".git").mkdir(parents=True)
    (tmp_path / "ws" / ".env").write_text("GITHUB_TOKEN=x\n")
    return load_settings(tmp_path / "ws", environ={})


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_container_kwargs_does_no_io(settings, tmp_path):
    before = files(tmp_path)
    kwargs = hardening.container_kwargs(settings, "img:tag", [])
    assert files(tmp_path) == before  # no state dir, no mask file, no .git/hooks
    assert kwargs["mounts"] == [] and kwargs["image"] == "img:tag"
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["read_only"] is True and kwargs["privileged"] is False
    assert LABEL_RUN_CONFIG not in kwargs["labels"]  # hashed last, by with_hashes


def test_the_options_hash_leaves_out_image_and_mounts_the_run_config_does_not(settings):
    base = hardening.with_hashes(hardening.container_kwargs(settings, "a", []))
    other_image = hardening.with_hashes(hardening.container_kwargs(settings, "b", ["m"]))
    assert base["labels"][LABEL_OPTIONS] == other_image["labels"][LABEL_OPTIONS]
    assert base["labels"][LABEL_RUN_CONFIG] != other_image["labels"][LABEL_RUN_CONFIG]
    settings.memory = "1g"
    smaller = hardening.with_hashes(hardening.container_kwargs(settings, "a", []))
    assert smaller["labels"][LABEL_OPTIONS] != base["labels"][LABEL_OPTIONS]


def test_adjust_changes_what_runs_and_its_hash(settings):
    def unconfined(kwargs):
        kwargs["security_opt"] = ["seccomp=unconfined"]
        return kwargs

    real = Sandbox(settings, object()).run_kwargs("img")
    control = Sandbox(settings, object(), adjust=unconfined).run_kwargs("img")
    assert control["security_opt"] == ["seccomp=unconfined"] != real["security_opt"]
    assert control["labels"][LABEL_RUN_CONFIG] != real["labels"][LABEL_RUN_CONFIG]  # never joins a real one
    masks = [m for m in real["mounts"] if m["Target"] == "/workspace/.env"]
    assert len(masks) == 1 and masks[0]["ReadOnly"] and masks[0]["Source"].endswith("empty-mask")


class FakeContainer:
    id = "c1"

    def __init__(self, labels, status="running", exit_code=0):
        self.attrs = {"State": {"Status": status, "ExitCode": exit_code, "StartedAt": "2026-01-01T00:00:00.5Z"},
                      "Config": {"Image": "pimagic:test", "Labels": labels}}

    @property
    def labels(self):
        return self.attrs["Config"]["Labels"]

    @property
    def status(self):
        return self.attrs["State"]["Status"]

    def reload(self):
        pass


class FakeClient:
    def __init__(self, container=None, error: Exception | None = None):
        self.container, self.error = container, error
        self.containers = self

    def get(self, name):
        if self.error is not None:
            raise self.error
        if self.container is None:
            raise docker.errors.NotFound("no such container")
        return self.container


def test_status_is_stale_only_when_the_settings_changed_and_walks_nothing(settings, tmp_path, monkeypatch):
    labels = Sandbox(settings, object()).run_kwargs("img")["labels"]
    sandbox = Sandbox(settings, FakeClient(FakeContainer(labels)))
    monkeypatch.setattr("pimagic.workspace.view", lambda *a, **k: pytest.fail("status walked the folder"))
    monkeypatch.setattr("pimagic.image.image_tag", lambda *a, **k: pytest.fail("status computed the image tag"))
    before = files(tmp_path)
    status = sandbox.status()
    assert status.state == "running" and not status.stale and status.image == "pimagic:test"
    settings.memory = "1g"
    assert sandbox.status().stale
    assert files(tmp_path) == before


def test_a_container_without_the_options_label_is_not_called_stale(settings):
    old = FakeContainer({LABEL_RUN_CONFIG: "0123456789abcdef"})
    assert not Sandbox(settings, FakeClient(old)).status().stale


def test_container_state_is_parsed_in_one_place():
    state = ContainerState.of(FakeContainer({}, status="exited", exit_code=75))
    assert state.idle_exit and not state.running and state.exit_code == 75
    assert ContainerState.of(FakeContainer({})).running


@pytest.mark.parametrize(
    ("error", "expected", "says"),
    [(docker.errors.APIError("500 Server Error", explanation="engine is shutting down"), SandboxError, "shutting"),
     (requests.exceptions.ConnectionError("Connection aborted"), DockerUnavailableError, "lost the Docker engine")],
)
@pytest.mark.parametrize("call", ["find", "status", "stop", "remove", "logs", "state"])
def test_docker_errors_are_translated_at_the_sandbox_boundary(settings, error, expected, says, call):
    sandbox = Sandbox(settings, FakeClient(error=error))
    with pytest.raises(expected, match=says) as e:
        getattr(sandbox, call)()
    assert e.value.hint


def test_exec_socket_and_kill_translate_too(settings):
    class Api:
        def exec_create(self, *a, **k):
            raise docker.errors.APIError("409", explanation="container is paused")

        def kill(self, name):
            raise requests.exceptions.ConnectionError("socket closed")

    client = FakeClient(FakeContainer({}))
    client.api = Api()
    sandbox = Sandbox(settings, client)
    with pytest.raises(SandboxError, match="container is paused"):
        sandbox.exec_socket(["true"])
    with pytest.raises(DockerUnavailableError):
        sandbox.kill()
