"""container/base/apt-mirror.sh: the offline base image's Debian mirror comes from the machine's
own apt configuration (one-line and deb822 formats), never from a host written into pimagic."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "container" / "base" / "apt-mirror.sh"


def mirror(apt: Path, suite: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), suite, str(apt)], capture_output=True, text=True, timeout=30)


def apt_dir(tmp_path: Path, sources_list: str = "", **files: str) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in files.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_one_line_format_with_options_and_comments(tmp_path):
    apt = apt_dir(tmp_path, (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://source-only.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main  # trailing comment\n"
    ))
    assert mirror(apt, "bookworm").stdout == "http://mirror.example/debian\n"
    assert mirror(apt, "bookworm-security").stdout == "http://security.example/debian-security\n"


def test_deb822_sources_disabled_stanzas_and_continuation_lines(tmp_path):
    apt = apt_dir(tmp_path, debian_sources=(
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "Enabled: no\n"
        "\n"
        "# a comment between stanzas\n"
        "Types: deb-src deb\n"
        "URIs: https://corp.example/mirrors/debian\n"
        "Suites: bookworm\n"
        "  bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: https://corp.example/mirrors/debian-security\n"
        "Suites: bookworm-security\n"
    ))
    assert mirror(apt, "bookworm").stdout == "https://corp.example/mirrors/debian\n"
    assert mirror(apt, "bookworm-security").stdout == "https://corp.example/mirrors/debian-security\n"


def test_exact_suite_wins_over_the_archive_layout_and_other_releases_fall_back_to_it(tmp_path):
    apt = apt_dir(tmp_path, "deb http://archive.example/debian trixie main\n",
                  local_list="deb http://snapshot.example/archive/20250520 bookworm main\n")
    assert mirror(apt, "bookworm").stdout == "http://snapshot.example/archive/20250520\n"
    # a Debian archive (…/debian) serves every release: a trixie machine can build bookworm
    assert mirror(apt, "bullseye").stdout == "http://archive.example/debian\n"


def test_disabled_files_and_other_repositories_do_not_count(tmp_path):
    apt = apt_dir(tmp_path,
                  other_list="deb https://vendor.example/apt stable main\n",
                  debian_sources_disabled="Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n",
                  cdrom_list="deb cdrom:[Debian 12]/ bookworm main\n")
    result = mirror(apt, "bookworm")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("ERROR: no apt source for 'bookworm'")
    assert "PIMAGIC_DEBIAN_MIRROR" in result.stderr


@pytest.mark.parametrize("suite", ["bookworm", "bookworm-security"])
def test_no_apt_configuration_is_a_clear_error(tmp_path, suite):
    result = mirror(tmp_path / "missing", suite)
    assert result.returncode == 1
    assert f"ERROR: no apt source for '{suite}'" in result.stderr


def test_build_script_names_no_mirror_host():
    build = (SCRIPT.parent / "build-offline-base.sh").read_text()
    assert "apt-mirror.sh" in build and "://" not in build
