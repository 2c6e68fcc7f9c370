"""Conversations follow the notebook's file, not its name (issue 11, item 2), through `%%pi` in
real kernels and in-process magics, with a real container, real pi and the scripted model."""

from __future__ import annotations

import json
import os

import pytest
from _support import release_magics
from IPython.core.interactiveshell import InteractiveShell
from test_kernel import Kernel

from pimagic.magics import PiMagics
from pimagic.scripted_model import say

NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def said(scripted) -> str:
    """Every user message pi sent the model in its last request (the conversation so far)."""
    return str([m.get("content") for m in scripted.messages(-1) if m.get("role") == "user"])


def test_a_renamed_notebook_continues_in_its_next_kernel_and_a_new_one_at_the_old_name_starts_fresh(
    settings, scripted, workspace
):
    (workspace / "Untitled.ipynb").write_text(NOTEBOOK)
    first = Kernel(settings, "Untitled.ipynb")
    try:
        scripted.push(say("noted"))
        r = first.execute("%%pi\nremember kiwi")
        assert r["status"] == "ok", r["text"]
        assert "sandbox started; new conversation for this notebook" in r["text"], r["text"]
        scripted.push(say("again"))
        r = first.execute("%%pi\nand mango")
        assert "new conversation" not in r["text"] and "sandbox started" not in r["text"]  # once per kernel
    finally:
        first.shutdown()

    os.rename(workspace / "Untitled.ipynb", workspace / "snake.ipynb")  # what JupyterLab's rename does
    renamed = Kernel(settings, "snake.ipynb")
    try:
        scripted.push(say("it was kiwi"))
        r = renamed.execute("%%pi\nwhich fruit?")
        assert r["status"] == "ok", r["text"]
        assert ("joined the running sandbox; continuing this notebook's conversation: 2 earlier prompts "
                "(`%pi new` starts fresh)") in r["text"], r["text"]
        assert "remember kiwi" in said(scripted) and "and mango" in said(scripted)
    finally:
        renamed.shutdown()

    (workspace / "Untitled.ipynb").write_text(NOTEBOOK)  # File > New: another Untitled.ipynb
    newcomer = Kernel(settings, "Untitled.ipynb")
    try:
        scripted.push(say("hello"))
        r = newcomer.execute("%%pi\nwho are you?")
        assert r["status"] == "ok", r["text"]
        assert "new conversation for this notebook" in r["text"], r["text"]
        assert "kiwi" not in said(scripted) and "who are you?" in said(scripted)
    finally:
        newcomer.shutdown()


@pytest.fixture
def magics_for(settings, monkeypatch):
    """A PiMagics as `%load_ext` makes it in a kernel Jupyter started for `notebook`."""
    made: list[PiMagics] = []

    def make(notebook: str) -> PiMagics:
        monkeypatch.setenv("JPY_SESSION_NAME", str(settings.workspace_path / notebook))
        monkeypatch.delenv("PIMAGIC_CONVERSATION", raising=False)
        magics = PiMagics(InteractiveShell.instance(), settings)
        magics.shell.register_magics(magics)
        made.append(magics)
        return magics

    yield make
    for magics in made:
        release_magics(magics)


def test_rename_between_two_magics_keeps_the_conversation_and_status_counts_prompts(
    magics_for, scripted, workspace, capsys
):
    (workspace / "Untitled.ipynb").write_text(NOTEBOOK)
    first = magics_for("Untitled.ipynb")
    scripted.push(say("noted"))
    result = first.shell.run_cell_magic("pi", "", "remember kiwi")
    assert result.ok, result.error
    first.shell.run_line_magic("pi", "status")
    assert "1 prompt\n" in capsys.readouterr().out  # prompts the user sent, not pi's 2 messages
    release_magics(first)

    os.rename(workspace / "Untitled.ipynb", workspace / "snake.ipynb")
    (workspace / "Untitled.ipynb").write_text(NOTEBOOK)
    renamed = magics_for("snake.ipynb")
    scripted.push(say("it was kiwi"))
    result = renamed.shell.run_cell_magic("pi", "", "which fruit?")
    assert "continuing this notebook's conversation: 1 earlier prompt" in result._repr_mimebundle_()["text/plain"]
    assert "remember kiwi" in said(scripted)
    renamed.shell.run_line_magic("pi", "new")  # recorded for this notebook: its next kernel starts there
    release_magics(renamed)

    again = magics_for("snake.ipynb")
    scripted.push(say("fresh"))
    result = again.shell.run_cell_magic("pi", "", "hello")
    assert "new conversation for this notebook" in result._repr_mimebundle_()["text/plain"]
    assert "kiwi" not in said(scripted)

    other = magics_for("Untitled.ipynb")  # the new file at the old name: its own conversation
    scripted.push(say("hi"))
    result = other.shell.run_cell_magic("pi", "", "who are you?")
    assert "new conversation for this notebook" in result._repr_mimebundle_()["text/plain"]
    assert "kiwi" not in said(scripted) and "hello" not in said(scripted)
