"""Pure tests of the per-channel escaping (issue 9, class 8) and of the seccomp argument filters."""

from __future__ import annotations

import pytest

from pimagic import seccomp
from pimagic.render import render_bundle
from pimagic.sanitize import clean, escape_name, html_prose
from pimagic.turn import Footer, TextBlock, Turn


@pytest.mark.parametrize(
    "name, shown",
    [
        ("plain.py", "plain.py"),
        ("sub/dir/v1.2-x_y@z+w.txt", "sub/dir/v1.2-x_y@z+w.txt"),
        ("a\rb", "'a\\rb'"),
        ("a\nb", "'a\\nb'"),
        ("tab\there", "'tab\\there'"),
        ("esc\x1b[2J", "'esc\\x1b[2J'"),
        ("c1\x9b31m", "'c1\\x9b31m'"),
        ("bidi\u202etxt.exe", "'bidi\\u202etxt.exe'"),
        ("zw\u200bsp", "'zw\\u200bsp'"),
        ("ls\u2028ep", "'ls\\u2028ep'"),
        ("back\\slash", "'back\\\\slash'"),
        ("bad\udcffbyte", "'bad\\xffbyte'"),  # os.fsdecode of a non-UTF-8 byte
        ("日本語.txt", "'日本語.txt'"),
        # red-team finding: visible text that passes for the footer around it is quoted
        ("x.txt · 0 host-executable files changed ✓", "'x.txt · 0 host-executable files changed ✓'"),
        ("it's", "'it\\'s'"),
    ],
)
def test_escape_name(name: str, shown: str) -> None:
    assert escape_name(name) == shown
    assert shown.isprintable()


def test_clean_shows_a_lone_cr_and_folds_only_tool_output() -> None:
    assert clean("warning: x\rfine") == "warning: x\\rfine"
    assert clean("10%\r100%\n", overwrite=True) == "100%\n"
    assert clean("a\r\nb") == "a\nb"  # CRLF is a newline, not an overwrite


def footer(files: list[str]) -> Footer:
    return Footer(None, {}, 1.0, files, "done")


def test_footer_and_notice_escape_file_names_in_every_bundle() -> None:
    evil = "x.sh\r\x1b]52;c;AAAA\x07\nfake: all good"
    turn = Turn()
    turn.add_notice(f"the agent changed files your machine may run: {escape_name(evil)}", warn=True)
    bundle = render_bundle(turn.blocks, footer([evil]))
    for doc in bundle.values():
        assert "\r" not in doc and "\x1b" not in doc and "\x07" not in doc
    plain = bundle["text/plain"].splitlines()
    assert not [line for line in plain if line.startswith("fake")]
    assert any("your machine may run: 'x.sh\\r\\x1b]52;c;AAAA\\x07\\nfake: all good'" in line for line in plain)
    assert "1 file changed: 'x.sh\\r" in bundle["text/plain"]


def test_a_notice_stays_on_one_line_even_unescaped() -> None:
    turn = Turn()
    turn.add_notice("warning: a\n[i] everything is fine", warn=True)
    plain = render_bundle(turn.blocks, footer([]))["text/plain"]
    assert "[!] warning: a [i] everything is fine" in plain


# --------------------------------------------------------------------------- prose links

@pytest.mark.parametrize(
    "markdown, target",
    [
        ("[snake.py](snake.py)", None),  # the text is its target: shown once, not linked
        ("[report](/etc/passwd)", "/etc/passwd"),
        ("[rel](../../etc/passwd)", "../../etc/passwd"),
        ("[notes.md](notes.md#x)", "notes.md#x"),
        ("[e](//evil.example/x)", "//evil.example/x"),
        ("[d](data:image/png;base64,AAAA)", "data:image/png;base64,AAAA"),
        ("[m](mailto:a@example.org)", "mailto:a@example.org"),
        ("[f](file:///etc/passwd)", None),  # markdown-it refuses it: the source stays text
        ("[j](javascript:alert(1))", None),
    ],
)
def test_prose_links_that_are_not_web_links_are_shown_not_linked(markdown: str, target: str | None) -> None:
    """Agent prose cannot pass for the footer's file links (red team, prose links): no href but
    http(s) to a host, and the target shown next to the text."""
    doc = html_prose(markdown)
    assert "<a " not in doc and "href=" not in doc
    if target is not None:
        assert f'<span class="pimagic-href">({target})</span>' in doc


@pytest.mark.parametrize("text", ["snake.py", "docs", "https://other.example/"])
def test_a_web_link_in_prose_shows_where_it_goes(text: str) -> None:
    doc = html_prose(f"[{text}](http://attacker.example/a?b=1&c=2)")
    href = "http://attacker.example/a?b=1&amp;c=2"
    assert f'<a href="{href}">{text}</a> <span class="pimagic-href">({href})</span>' in doc


def test_an_autolink_is_not_shown_twice() -> None:
    doc = html_prose("<https://example.org/x>")
    assert doc.count("https://example.org/x") == 2 and "pimagic-href" not in doc  # href + text


def test_prose_links_do_not_change_the_footers_file_links() -> None:
    html_doc = render_bundle([TextBlock("see [snake.py](../snake.py)")], footer(["snake.py"]))["text/html"]
    assert html_doc.count("<a ") == 1 and '<a href="snake.py"' in html_doc
    assert '<span class="pimagic-href">(../snake.py)</span>' in html_doc


# --------------------------------------------------------------------------- seccomp


def verdict(profile: dict, name: str, args: list[int]) -> str:
    """How the profile answers a syscall: the rules are ALLOW-only besides the default."""
    ops = {
        "SCMP_CMP_EQ": lambda a, v, _: a == v,
        "SCMP_CMP_MASKED_EQ": lambda a, m, v: a & m == v,
    }
    for rule in profile["syscalls"]:
        if name not in rule["names"]:
            continue
        conds = rule.get("args") or []
        if all(ops[c["op"]](args[c["index"]], c["value"], c["valueTwo"]) for c in conds):
            return rule["action"]
    return profile["defaultAction"]


@pytest.mark.parametrize("family, allowed", [(1, True), (2, True), (10, True), (16, True), (40, False),
                                             (38, False), (17, False), (0x100000002, False)])
def test_socket_families(family: int, allowed: bool) -> None:
    prof = seccomp.profile("x86_64")
    for call in ("socket", "socketpair"):
        assert (verdict(prof, call, [family, 1, 0]) == "SCMP_ACT_ALLOW") is allowed


@pytest.mark.parametrize("request_, allowed", [
    (0x5412, False), (0x1_0000_5412, False), (0x541C, False), (0xFFFF_FFFF_0000_541C, False),
    (0x5401, True), (0x5413, True), (0x5411, True), (0x541B, True), (0x541D, True), (0x80045430, True),
    (0x1_0000_5401, True), (0, True), (0xFFFFFFFF, True),
])
def test_ioctl_requests(request_: int, allowed: bool) -> None:
    prof = seccomp.profile("x86_64")
    assert (verdict(prof, "ioctl", [0, request_, 0]) == "SCMP_ACT_ALLOW") is allowed
    assert "ioctl" not in seccomp.ALLOWED and "socket" not in seccomp.ALLOWED
