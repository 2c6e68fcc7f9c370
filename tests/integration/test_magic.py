"""`%%pi` end to end in a real IPython shell: real container, real pi, the
scripted model standing in for a provider."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
from _support import AGENT_UID
from IPython.core.error import UsageError

from pimagic.errors import ModelNotFoundError, TurnFailed, TurnInterrupted
from pimagic.magics import prompt_on_magic_line
from pimagic.scripted_model import Turn, call, error, say


@pytest.fixture
def shell(pi_magics, scripted):
    return pi_magics.shell


def run(shell, body: str, line: str = ""):
    return shell.run_cell_magic("pi", line, body)


def user_texts(messages: list[dict]) -> list[str]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append(f"{m.get('role')}: {content}")
    return out


def test_cell_writes_file_owned_by_host_user_and_shows_tool_call(shell, scripted, workspace):
    scripted.push(call("write", path="snake.py", content="print('snake')\n"), say("Wrote **snake.py**."))
    result = run(shell, "Create a snake game in python")
    target = workspace / "snake.py"
    assert target.read_text() == "print('snake')\n"
    assert target.stat().st_uid == AGENT_UID
    assert result.text == "Wrote **snake.py**."
    assert [c.name for c in result.tool_calls] == ["write"]
    assert "snake.py" in result.changed_files
    bundle = result._repr_mimebundle_()
    assert "write" in bundle["text/plain"] and "snake.py" in bundle["text/plain"]
    assert "<script" not in bundle["text/html"]
    assert shell.user_ns["_pi"] is result


def test_second_cell_continues_the_conversation_and_new_starts_fresh(shell, scripted):
    scripted.push(say("first answer"))
    run(shell, "remember the word pineapple")
    scripted.push(say("second answer"))
    run(shell, "what was the word?")
    history = user_texts(scripted.messages(-1))
    assert any("pineapple" in t for t in history)
    assert any("first answer" in t for t in history)

    scripted.push(say("fresh"))
    result = run(shell, "hello again", "--new")
    assert result.text == "fresh"
    assert not any("pineapple" in t for t in user_texts(scripted.messages(-1)))


def test_output_binding_and_interpolation(shell, scripted):
    shell.user_ns["n_rows"] = 42
    scripted.push(say("ok"))
    result = run(shell, "the frame has {n_rows} rows", "-i -o answer")
    assert shell.user_ns["answer"] is result
    assert any("the frame has 42 rows" in t for t in user_texts(scripted.messages(-1)))


def test_interrupt_aborts_the_turn_in_one_line_and_the_next_cell_works(shell, scripted, capsys):
    scripted.push(Turn(text="word " * 200, chunk_size=4, chunk_delay=0.05))

    def interrupt_once_streaming():  # as a kernel interrupt would: SIGINT in the main thread
        scripted.wait_for_requests(1, timeout=60)
        time.sleep(0.5)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_streaming, daemon=True).start()
    started = time.monotonic()
    outcome = shell.run_cell("%%pi\ntalk for a long time")
    assert time.monotonic() - started < 15
    assert isinstance(outcome.error_in_exec, TurnInterrupted)  # a KeyboardInterrupt: Run All stops
    assert isinstance(outcome.error_in_exec, KeyboardInterrupt)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "pimagic: interrupted; the turn was aborted, the sandbox and the session are kept" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Ctrl-C" not in text
    assert shell.user_ns["_pi"].aborted and outcome.error_in_exec.result is shell.user_ns["_pi"]
    assert "Aborted: interrupted" in text  # the turn so far is shown above the line
    scripted.reset()
    scripted.push(say("still here"))
    assert run(shell, "are you there?").text == "still here"


@pytest.mark.parametrize("turn", [error(500, "model exploded"), error(429, "slow down")])
def test_model_error_fails_the_cell_clearly_in_bounded_time(shell, scripted, turn):
    scripted.push(turn)
    started = time.monotonic()
    with pytest.raises(TurnFailed) as failed:
        run(shell, "hi")
    assert time.monotonic() - started < 30
    result = failed.value.result
    assert shell.user_ns["_pi"] is result and result.error and not result.ok
    assert "exploded" in result.error or "slow down" in result.error or "429" in result.error
    assert "provider 'pimagic-scripted'" in failed.value.message
    plain = result._repr_mimebundle_()["text/plain"]
    assert "error" in plain.lower() and "what to do:" in plain and "--keep-going" in plain


def _closed_port(docker_client) -> int:
    """A port on the bridge gateway nothing listens on: a model server that is down."""
    import socket

    from pimagic.relay import bridge_gateway

    with socket.socket() as s:
        s.bind((bridge_gateway(docker_client), 0))
        return s.getsockname()[1]


def test_a_down_model_server_fails_the_cell_naming_provider_url_and_what_to_do(shell, settings, docker_client,
                                                                               capsys):
    from pimagic.providers import register_provider
    from pimagic.scripted_model import pi_provider_config

    url = f"http://host.docker.internal:{_closed_port(docker_client)}/v1"
    register_provider(settings, "dead", pi_provider_config(url, "m"), model_id="m", retry=False)
    started = time.monotonic()
    outcome = shell.run_cell("%%pi\nhi")
    took = time.monotonic() - started
    assert took < 30
    failed = outcome.error_in_exec
    assert isinstance(failed, TurnFailed), outcome
    assert failed.message.startswith(f"cannot reach provider 'dead' at {url}: Connection error")
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "Traceback" not in text and f"pimagic: cannot reach provider 'dead' at {url}" in text
    result = shell.user_ns["_pi"]
    plain = result._repr_mimebundle_()["text/plain"]
    assert f"start the model server (it must answer at {url})" in plain
    assert "`%pi models`" in plain and "`%pi settings`" in plain and ".:" not in plain
    assert result.duration > 0 and f"{result.duration:.1f}s" in plain  # the real duration in the footer

    # --keep-going (or the setting) lets a notebook go on past a failed turn; `_pi` says what happened.
    result = run(shell, "hi", "--keep-going")
    assert result.error and shell.user_ns["_pi"] is result
    settings.fail_on_error = False
    try:
        assert run(shell, "hi").error
    finally:
        settings.fail_on_error = True


def test_killed_container_is_detected_and_history_survives(shell, scripted, settings, docker_client):
    scripted.push(say("answer before the crash"))
    run(shell, "remember mango")
    docker_client.containers.get(settings.container_name).kill()
    scripted.push(say("answer after the crash"))
    result = run(shell, "what fruit?")
    assert result.text == "answer after the crash"
    plain = result._repr_mimebundle_()["text/plain"]
    assert "resumed session" in plain
    history = user_texts(scripted.messages(-1))
    assert any("mango" in t for t in history)
    assert any("answer before the crash" in t for t in history)


@pytest.mark.parametrize("line", ["--bogus", "--model nope", "--thinking extreme", "--timeout -3", "--out 1x"])
def test_bad_options_raise_usage_error(shell, line):
    with pytest.raises(UsageError):
        run(shell, "hi", line)


def test_unknown_line_subcommand_raises_usage_error(shell):
    with pytest.raises(UsageError, match="stat"):
        shell.run_line_magic("pi", "stauts")


def test_status_line_magic(shell, scripted, capsys):
    scripted.push(say("hi"))
    run(shell, "hi")
    shell.run_line_magic("pi", "status")
    out = capsys.readouterr().out
    assert "running" in out and "pimagic-scripted/scripted" in out
    assert "pi: tokens (this session): " in out and " in / " in out  # what the help promises


def test_secret_file_created_between_cells_is_hidden_from_the_next_cell(shell, scripted, workspace):
    scripted.push(say("started"))
    run(shell, "hello")
    (workspace / ".env").write_text("OPENAI_API_KEY=sk-canary-between-cells\n")
    scripted.push(call("bash", command="stat -c %s /workspace/.env; cat /workspace/.env"), say("looked"))
    result = run(shell, "read the env file")
    assert "sk-canary-between-cells" not in result.tool_calls[0].result
    assert result.tool_calls[0].result.split()[0] == "0"  # an empty file is mounted over it
    assert ".env" in result._repr_mimebundle_()["text/plain"]  # the notice says what happened
    assert any("hello" in t for t in user_texts(scripted.messages(-1)))  # the conversation went on


def test_a_secret_file_hidden_at_start_keeps_the_sandbox_across_cells(shell, scripted, workspace, pi_magics):
    """The start records what it masked: a `.env` present from the first cell on does not replace
    the container at every cell; only a new secret file does, and the cell says so."""
    (workspace / ".env").write_text("OPENAI_API_KEY=sk-canary-at-start\n")
    scripted.push(say("one"))
    run(shell, "first")
    first = pi_magics.session.sandbox.find().id
    scripted.push(say("two"))
    second = run(shell, "second")
    assert pi_magics.session.sandbox.find().id == first
    assert "secret files" not in second._repr_mimebundle_()["text/plain"]
    (workspace / "deploy.key").write_text("key")
    scripted.push(say("three"))
    third = run(shell, "third")
    assert pi_magics.session.sandbox.find().id != first
    assert "new secret files (deploy.key) are now hidden" in third._repr_mimebundle_()["text/plain"]


def test_timeout_option_aborts_a_hung_turn_and_the_next_cell_works(shell, scripted):
    from pimagic.scripted_model import hang

    scripted.push(hang())
    started = time.monotonic()
    with pytest.raises(TurnFailed, match="timed out") as failed:
        run(shell, "this will hang", "--timeout 3")
    assert time.monotonic() - started < 15
    result = failed.value.result
    assert result.error and "did not finish within 3s" in result.error
    scripted.reset()
    scripted.push(say("recovered"))
    assert run(shell, "hello?").text == "recovered"


def test_prompt_on_the_magic_line_and_as_a_line_magic(shell, scripted):
    """`%%pi Create a snake game` with no body, and `%pi Create a snake game`, are prompts."""
    shell.input_transformers_cleanup.append(prompt_on_magic_line)
    try:
        scripted.push(say("one"), say("two"), say("three"))
        outcome = shell.run_cell("%%pi Create a snake game")
        assert outcome.error_in_exec is None and outcome.result.text == "one"
        outcome = shell.run_cell("%pi -q Create a 'snake' game, don't stop")
        assert outcome.error_in_exec is None and outcome.result.text == "two"
        outcome = shell.run_cell("%%pi Make it\nin pygame")  # the line, then the body
        assert outcome.error_in_exec is None and outcome.result.text == "three"
    finally:
        shell.input_transformers_cleanup.remove(prompt_on_magic_line)
    said = [t for t in user_texts(scripted.messages(-1)) if t.startswith("user")]
    assert said[-3:] == ["user: Create a snake game", "user: Create a 'snake' game, don't stop",
                         "user: Make it\n\nin pygame"]


def test_model_option_holds_for_one_cell_and_a_bad_model_lists_the_choices(shell, scripted, settings, pi_magics):
    from pimagic.providers import register_provider
    from pimagic.scripted_model import pi_provider_config

    register_provider(settings, "other", pi_provider_config(scripted.base_url("host.docker.internal"), "m2"))
    scripted.push(say("from m2"), say("from the default"))
    assert run(shell, "hi", "-m other/m2").text == "from m2"
    assert scripted.chat_requests[-1].body["model"] == "m2"
    model = pi_magics.session.state()["model"]
    assert (model["provider"], model["id"]) == ("pimagic-scripted", "scripted")  # restored after the cell
    assert run(shell, "again").text == "from the default"
    assert scripted.chat_requests[-1].body["model"] == "scripted"

    with pytest.raises(ModelNotFoundError) as bad:
        run(shell, "hi", "-m nosuchprovider/x")
    text = str(bad.value)
    assert "pi has no model 'nosuchprovider/x' (from -m)" in text
    assert "pimagic-scripted/scripted" in text and "other/m2" in text and "`%pi settings`" in text
    with pytest.raises(ModelNotFoundError, match="closest: pimagic-scripted/scripted"):
        shell.run_line_magic("pi", "model pimagic-scripted/scriptd")


def test_logs_right_after_a_restart_say_there_is_no_output_yet(shell, scripted, capsys):
    scripted.push(say("hi"))
    run(shell, "hi")
    shell.run_line_magic("pi", "restart")
    capsys.readouterr()
    shell.run_line_magic("pi", "logs")
    out = capsys.readouterr().out
    assert out.strip() == "no output yet from pi or the sandbox (none since it last started)"


def test_a_model_setting_pi_does_not_have_is_named_with_the_choices(shell, scripted, settings):
    settings.model = "pimagic-scripted/nosuch"
    with pytest.raises(ModelNotFoundError) as bad:
        run(shell, "hi")
    text = str(bad.value)
    assert "pi has no model 'pimagic-scripted/nosuch' (from PimagicSettings.model / PIMAGIC_MODEL)" in text
    assert "closest: pimagic-scripted/scripted" in text
