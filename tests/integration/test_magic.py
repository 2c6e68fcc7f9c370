"""`%%pi` end to end in a real IPython shell: real container, real pi, the
scripted model standing in for a provider."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
from _support import AGENT_UID
from IPython.core.error import UsageError

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


def test_interrupt_aborts_the_turn_and_the_next_cell_works(shell, scripted):
    scripted.push(Turn(text="word " * 200, chunk_size=4, chunk_delay=0.05))

    def interrupt_once_streaming():  # as a kernel interrupt would: SIGINT in the main thread
        scripted.wait_for_requests(1, timeout=60)
        time.sleep(0.5)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_streaming, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(shell, "talk for a long time")
    assert time.monotonic() - started < 15
    assert shell.user_ns["_pi"].aborted
    scripted.reset()
    scripted.push(say("still here"))
    assert run(shell, "are you there?").text == "still here"


@pytest.mark.parametrize("turn", [error(500, "model exploded"), error(429, "slow down")])
def test_model_error_is_shown_clearly_in_bounded_time(shell, scripted, turn):
    scripted.push(turn)
    started = time.monotonic()
    result = run(shell, "hi")
    assert time.monotonic() - started < 30
    assert result.error
    assert "exploded" in result.error or "slow down" in result.error or "429" in result.error
    assert "error" in result._repr_mimebundle_()["text/plain"].lower()


def test_unreachable_model_server_is_an_error_not_a_hang(shell, settings):
    from pimagic.offline import register_provider
    from pimagic.scripted_model import pi_provider_config

    register_provider(
        settings, "dead", pi_provider_config("http://host.docker.internal:9/v1", "m"), model_id="m", retry=False
    )
    started = time.monotonic()
    result = run(shell, "hi")
    assert time.monotonic() - started < 30
    assert result.error


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


def test_timeout_option_aborts_a_hung_turn_and_the_next_cell_works(shell, scripted):
    from pimagic.scripted_model import hang

    scripted.push(hang())
    started = time.monotonic()
    result = run(shell, "this will hang", "--timeout 3")
    assert time.monotonic() - started < 15
    assert result.error and "did not finish within 3s" in result.error
    scripted.reset()
    scripted.push(say("recovered"))
    assert run(shell, "hello?").text == "recovered"
