"""After a successful background start, the kernel also prepares what the first answer needs (pi's
session-stats answer for the greeting, the Markdown parser), and only then: a start a cell made
first, or a failed one, prepares nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pimagic import image, sanitize
from pimagic.session import StartReport
from pimagic.warmstart import WarmStart, warm_renderer


class FakeSession:
    def __init__(self, report: StartReport | None) -> None:
        self.report = report
        self.settings = SimpleNamespace()
        self.sandbox = SimpleNamespace(client=object())
        self.counted = 0

    def warm(self) -> StartReport | None:
        return self.report

    def prompt_count(self) -> int | None:
        self.counted += 1
        return 0


@pytest.fixture
def image_present(monkeypatch):
    monkeypatch.setattr(image, "image_tag", lambda settings: "pimagic-sandbox:test")
    monkeypatch.setattr(image, "image_exists", lambda client, tag: True)


@pytest.fixture
def fresh_parser(monkeypatch):
    monkeypatch.setattr(sanitize, "_MD", None)


def test_a_successful_start_prepares_the_first_answer(image_present, fresh_parser):
    session = FakeSession(StartReport("created"))
    assert WarmStart(session).begin().wait(10) == "started (created)"
    assert session.counted == 1
    assert sanitize._MD is not None


def test_a_start_a_cell_made_first_prepares_nothing(image_present, fresh_parser):
    session = FakeSession(None)
    assert WarmStart(session).begin().wait(10) == "skipped: a cell started it first"
    assert session.counted == 0
    assert sanitize._MD is None


def test_the_prepared_parser_is_the_one_answers_use(fresh_parser):
    warm_renderer()
    parser = sanitize._MD
    assert sanitize.html_prose("**x**") == '<div class="pimagic-text"><p><strong>x</strong></p>\n</div>'
    assert sanitize._MD is parser
