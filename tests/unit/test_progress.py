"""The build/start-up progress line of the magic."""

from __future__ import annotations


def test_build_progress_shows_a_bar_for_docker_steps_and_hides_chatter(capsys):
    from pimagic.magics import _Progress

    progress = _Progress(None)  # no kernel: prints
    for line in ["Sending build context", "Step 1/4 : FROM base", " ---> abc123", "Step 4/4 : CMD x"]:
        progress(line)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "pimagic: Sending build context"
    assert lines[1].startswith("pimagic: building the sandbox image [######") and "1/4 FROM base" in lines[1]
    assert "[" + "#" * 24 + "] 4/4 CMD x" in lines[2]
    assert len(lines) == 3  # " ---> abc123" is not shown once steps are under way
