"""pimagic.parsers: magic lines -> typed args; every mistake is a UsageError, never SystemExit."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from IPython.core.error import UsageError

from pimagic.parsers import (
    HELP_TEXT,
    LINE_COMMANDS,
    THINKING_LEVELS,
    CellArgs,
    LineCommand,
    ModelRef,
    interpolate,
    parse_cell_args,
    parse_line,
    parse_model,
)

# --------------------------------------------------------------------------- %%pi options


def test_empty_line_gives_defaults():
    assert parse_cell_args("") == CellArgs()
    assert parse_cell_args("   ") == CellArgs()


def test_all_long_options():
    args = parse_cell_args(
        "--model anthropic/claude-sonnet-4-5 --thinking high --new --timeout 90 "
        "--interpolate --out ans --quiet"
    )
    assert args == CellArgs(
        model=ModelRef("anthropic", "claude-sonnet-4-5"),
        thinking="high",
        new_session=True,
        timeout=90.0,
        interpolate=True,
        out="ans",
        quiet=True,
    )


def test_short_options_and_equals_form():
    args = parse_cell_args("-m openai/gpt-5 -t off -i -o r -q --timeout=2.5")
    assert args.model == ModelRef("openai", "gpt-5")
    assert (args.thinking, args.interpolate, args.out, args.quiet, args.timeout) == (
        "off",
        True,
        "r",
        True,
        2.5,
    )


def test_model_id_may_contain_slashes_and_quotes_work():
    args = parse_cell_args("-m 'openrouter/qwen/qwen3-coder:free'")
    assert args.model == ModelRef("openrouter", "qwen/qwen3-coder:free")
    assert str(args.model) == "openrouter/qwen/qwen3-coder:free"


@pytest.mark.parametrize(
    "spec",
    ["claude", "/claude", "anthropic/", "anthropic//x", "anthropic/x/", "a b/c", "anthropic/x y", "_a/b"],
)
def test_bad_model_shapes(spec):
    with pytest.raises(UsageError, match="PROVIDER/ID"):
        parse_model(spec)
    with pytest.raises(UsageError, match=f"invalid model '{spec}'"):
        parse_cell_args(f"--model '{spec}'")


def test_every_documented_thinking_level_is_accepted():
    for level in THINKING_LEVELS:
        assert parse_cell_args(f"-t {level}").thinking == level


def test_bad_thinking_level_suggests_the_closest():
    with pytest.raises(UsageError) as e:
        parse_cell_args("-t hihg")
    assert "did you mean 'high'" in str(e.value)
    assert "off, minimal, low, medium, high, xhigh" in str(e.value)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "inf", "nan", "''"])
def test_bad_timeout(value):
    with pytest.raises(UsageError, match="positive number"):
        parse_cell_args(f"--timeout {value}")


@pytest.mark.parametrize("name", ["1x", "class", "a-b", "x.y", "''"])
def test_bad_out_name(name):
    with pytest.raises(UsageError, match="identifier"):
        parse_cell_args(f"-o {name}")


def test_unknown_option_names_the_valid_ones_and_suggests():
    with pytest.raises(UsageError) as e:
        parse_cell_args("--modle anthropic/x")
    msg = str(e.value)
    assert "--modle" in msg and "did you mean '--model'" in msg
    assert "--thinking" in msg and "%pi help" in msg


def test_no_abbreviations():
    with pytest.raises(UsageError):
        parse_cell_args("--time 5")


def test_words_after_the_options_are_the_prompt_verbatim():
    assert parse_cell_args("fix the tests").prompt == "fix the tests"
    args = parse_cell_args("""-m a/b -q --timeout 5 Create a "snake" game, don't  stop""")
    assert args.model == ModelRef("a", "b") and args.quiet and args.timeout == 5
    assert args.prompt == """Create a "snake" game, don't  stop"""  # quotes, apostrophes, spaces kept


def test_double_dash_ends_the_options():
    assert parse_cell_args("-q -- -m is the flag I mean").prompt == "-m is the flag I mean"
    assert parse_cell_args("-q --").prompt == ""
    assert parse_cell_args("--keep-going").keep_going


def test_an_unknown_option_still_suggests_and_says_how_to_start_a_prompt_with_a_dash():
    with pytest.raises(UsageError) as e:
        parse_cell_args("--quite hi")
    assert "did you mean '--quiet'" in str(e.value) and "`--`" in str(e.value)


def test_missing_value_is_a_usage_error_not_system_exit():
    with pytest.raises(UsageError, match="expected one argument"):
        parse_cell_args("--model")


def test_unbalanced_quote():
    with pytest.raises(UsageError, match="No closing quotation"):
        parse_cell_args("-m 'anthropic/x")


def test_help_flag_shows_usage_instead_of_exiting():
    with pytest.raises(UsageError, match="usage: %%pi"):
        parse_cell_args("--help")


def test_cell_args_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_cell_args("").quiet = True  # type: ignore[misc]


# --------------------------------------------------------------------------- %pi subcommands


@pytest.mark.parametrize("name", ["status", "new", "abort", "models", "stop", "restart", "settings", "help"])
def test_plain_subcommands(name):
    assert parse_line(name) == LineCommand(name)


def test_empty_line_is_help():
    assert parse_line("") == LineCommand("help")
    assert parse_line("--help") == LineCommand("help")


def test_reset_is_an_alias_of_new():
    assert parse_line("reset") == LineCommand("new")


def test_model_show_and_set():
    assert parse_line("model") == LineCommand("model")
    assert parse_line("model openrouter/a/b") == LineCommand("model", model=ModelRef("openrouter", "a/b"))
    with pytest.raises(UsageError, match="PROVIDER/ID"):
        parse_line("model gpt5")
    with pytest.raises(UsageError, match="at most one"):
        parse_line("model a/b c/d")


def test_thinking_show_and_set():
    assert parse_line("thinking") == LineCommand("thinking")
    assert parse_line("thinking xhigh") == LineCommand("thinking", thinking="xhigh")
    with pytest.raises(UsageError, match="did you mean 'medium'"):
        parse_line("thinking meduim")


def test_logs():
    assert parse_line("logs") == LineCommand("logs")
    assert parse_line("logs -n 50") == LineCommand("logs", lines=50)
    assert parse_line("logs --lines=7").lines == 7
    for bad in ("logs -n 0", "logs -n x", "logs -n", "logs 50", "logs --all"):
        with pytest.raises(UsageError):
            parse_line(bad)


def test_arguments_to_argless_subcommand():
    with pytest.raises(UsageError, match="takes no arguments"):
        parse_line("status now")


def test_unknown_subcommand_suggests_and_lists():
    with pytest.raises(UsageError) as e:
        parse_line("stauts")
    msg = str(e.value)
    assert "unknown subcommand 'stauts'" in msg and "did you mean 'status'" in msg
    assert "%pi -- stauts" in msg
    with pytest.raises(UsageError, match="did you mean 'model'"):
        parse_line("modle openai/gpt-5")  # a typo with its argument is not sent to the agent
    assert parse_line("modle the data, please").name == "prompt"  # a sentence is a prompt
    assert all(name in msg for name in LINE_COMMANDS) and "reset" in msg


def test_a_line_that_is_not_a_subcommand_is_a_prompt():
    assert parse_line("Create a snake game") == LineCommand(
        "prompt", cell=CellArgs(prompt="Create a snake game")
    )
    assert parse_line("zzzz").cell == CellArgs(prompt="zzzz")
    assert parse_line("hello").cell == CellArgs(prompt="hello")  # not "did you mean help"
    assert parse_line("-q -m a/b write the tests").cell == CellArgs(
        model=ModelRef("a", "b"), quiet=True, prompt="write the tests"
    )
    assert parse_line("-- stauts").cell == CellArgs(prompt="stauts")  # the way to send a typo-like word


def test_options_without_a_prompt_on_the_line_say_the_forms():
    with pytest.raises(UsageError) as e:
        parse_line("-q -m a/b")
    assert "no prompt" in str(e.value) and "%%pi Create a snake game" in str(e.value)


def test_a_subcommand_with_words_after_it_says_how_to_send_them_as_a_prompt():
    with pytest.raises(UsageError) as e:
        parse_line("status report please")
    assert "takes no arguments" in str(e.value) and "%pi -- status report please" in str(e.value)


def test_help_text_mentions_every_subcommand_and_option():
    for name in LINE_COMMANDS:
        assert name in HELP_TEXT
    for option in ("--model", "--thinking", "--new", "--timeout", "--interpolate", "--out", "--quiet", "--keep-going"):
        assert option in HELP_TEXT


def test_help_text_is_true_to_behaviour():
    assert "%%pi Create a snake game" in HELP_TEXT and "%pi Create a snake game" in HELP_TEXT
    assert "for this cell only" in HELP_TEXT  # -m and -t are restored after the cell
    assert "the conversation continues" in LINE_COMMANDS["restart"][1]  # restart keeps the session
    assert "remove" not in LINE_COMMANDS["stop"][1] and "kept" in LINE_COMMANDS["stop"][1]
    assert "token usage" in LINE_COMMANDS["status"][1]
    assert "fails the cell" in HELP_TEXT and "Interrupt" in HELP_TEXT


# --------------------------------------------------------------------------- interpolation

NS = {"name": "world", "n": 3, "df": SimpleNamespace(shape=(2, 5), meta=SimpleNamespace(path="/d.csv"))}


def test_names_and_attributes():
    assert interpolate("hello {name}, n={n}", NS) == "hello world, n=3"
    assert interpolate("{df.shape} from {df.meta.path}", NS) == "(2, 5) from /d.csv"
    assert interpolate("{ name }", NS) == "world"


def test_double_braces_are_literal():
    assert interpolate('{{"a": {n}}}', NS) == '{"a": 3}'
    assert interpolate("no braces at all", NS) == "no braces at all"


def test_missing_name_is_named():
    with pytest.raises(UsageError, match="'missing' is not defined"):
        interpolate("use {missing}", NS)


def test_missing_attribute_is_named():
    with pytest.raises(UsageError, match="'df' has no attribute 'colums'"):
        interpolate("{df.colums}", NS)


@pytest.mark.parametrize(
    "template",
    ["{df.shape[0]}", "{n + 1}", "{__import__('os').system('x')}", "{n!r}", "{n:>5}", "{}", '{"a": 1}'],
)
def test_anything_but_names_is_rejected_without_evaluation(template):
    with pytest.raises(UsageError, match="unsupported placeholder"):
        interpolate(template, NS)


def test_private_attributes_are_refused():
    with pytest.raises(UsageError, match="private attribute '__class__'"):
        interpolate("{n.__class__}", NS)


@pytest.mark.parametrize("template", ["a { b", "a } b", "{n}}"])
def test_lone_braces_are_rejected(template):
    with pytest.raises(UsageError, match="literal brace"):
        interpolate(template, NS)


def test_value_is_not_reinterpolated():
    assert interpolate("{x}", {"x": "{n}"}) == "{n}"

