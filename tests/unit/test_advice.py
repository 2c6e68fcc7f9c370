"""What a failed turn or a bad model choice tells the user: the provider, its address, the next step."""

from __future__ import annotations

from pimagic.advice import model_choices_hint, tidy_error, turn_failure, unreachable


def test_doubled_punctuation_from_pi_is_tidied():
    assert tidy_error("Connection error.: connect ECONNREFUSED 172.17.0.1:18765") == (
        "Connection error: connect ECONNREFUSED 172.17.0.1:18765"
    )
    assert tidy_error("Wait... then: ok. Done.") == "Wait... then: ok. Done."  # nothing else changes


def test_a_down_server_names_provider_url_and_what_to_do():
    summary, todo = turn_failure(
        "Connection error.: connect ECONNREFUSED 172.17.0.1:18765", "local/qwen", "http://127.0.0.1:8080/v1"
    )
    assert summary == (
        "cannot reach provider 'local' at http://127.0.0.1:8080/v1: Connection error: connect ECONNREFUSED "
        "172.17.0.1:18765"
    )
    assert "start the model server (it must answer at http://127.0.0.1:8080/v1)" in todo
    assert "`%pi models`" in todo and "`%pi model PROVIDER/ID`" in todo and "`%pi settings`" in todo
    assert ".:" not in summary + todo and ".." not in summary + todo


def test_a_builtin_provider_without_url_and_other_failures():
    summary, _ = turn_failure("fetch failed", "anthropic/claude-sonnet-4-5", None)
    assert summary == "cannot reach provider 'anthropic': fetch failed"
    summary, todo = turn_failure("401 Unauthorized: invalid x-api-key", "anthropic/c", None)
    assert "refused the request" in summary and "API key" in todo
    summary, todo = turn_failure("500 model exploded", "p/m", None)
    assert summary == "provider 'p' failed the turn: 500 model exploded" and "`%pi logs`" in todo
    summary, todo = turn_failure("the agent did not finish within 3s", "p/m", None)
    assert summary.startswith("the turn timed out") and "--timeout" in todo
    assert unreachable("connect EHOSTUNREACH 10.0.0.1:80") and not unreachable("429 slow down")


def test_model_choices_lists_the_closest_and_points_at_models():
    names = [f"anthropic/claude-{v}" for v in ("sonnet-4-5", "opus-4-1", "haiku-4-5")] + [
        f"openai/gpt-{i}" for i in range(10)
    ]
    hint = model_choices_hint("anthropic/claude-sonet-4-5", names)
    assert hint.startswith("closest: anthropic/claude-sonnet-4-5")
    assert "(of 13; `%pi models` lists them all)" in hint and "`%pi settings`" in hint
    hint = model_choices_hint("nosuchprovider/x", names)
    assert hint.startswith("available: ") and "`%pi models`" in hint
    assert model_choices_hint("a/b", []) == (
        "pi has no model configured: add a provider or a local server in `%pi settings`"
    )


def test_pimagic_side_failures_do_not_blame_the_provider():
    error = "pi's output channel is corrupt: a line too long"
    summary, todo = turn_failure(error, "local/m", "http://x:1/v1", own=True)
    assert summary == "pi's output channel is corrupt: a line too long" and "provider" not in summary
    assert todo == "run the cell again; `%pi logs` shows pi's side"
    # a timeout is still a timeout, whoever raised it
    assert turn_failure("the agent did not finish within 3s", "local/m", None, own=True)[0].startswith(
        "the turn timed out"
    )
