"""pimagic.workspace: the change report (what the host may run after a cell), the secret files
to mask, the read-only paths, and that only `disarm` writes."""

from __future__ import annotations

import os
import subprocess

import pytest

from pimagic import workspace
from pimagic.errors import WorkspaceReplacedError
from pimagic.workspace import SKIP_DIRS, diff, is_host_executable, snapshot


@pytest.mark.parametrize(
    "path",
    [".git/hooks/pre-commit", ".git/config", ".git/commondir", "lib/site-packages/evil.pth", "ipython_config.py",
     "jupyter_server_config.py", "Makefile", ".vscode/tasks.json", ".github/workflows/ci.yml", "conftest.py",
     "analysis.ipynb", ".envrc", "pytest.ini", ".venv/bin/activate"],
)
def test_paths_the_host_runs_on_its_own_are_flagged(path):
    assert is_host_executable(path, 0o100644)


@pytest.mark.parametrize("path", ["data.csv", "notes.md", "src/model.txt", "figure.png"])
def test_plain_data_is_not_flagged(path):
    assert not is_host_executable(path, 0o100644)


def test_an_executable_bit_is_flagged_whatever_the_name():
    assert is_host_executable("tools/run-me", 0o100755)


def test_diff_reports_created_modified_deleted_and_host_executable(tmp_path):
    (tmp_path / "keep.txt").write_text("a")
    (tmp_path / "gone.txt").write_text("b")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    before = snapshot(tmp_path)
    (tmp_path / "keep.txt").write_text("changed")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "sitecustomize.py").write_text("import os")
    (tmp_path / ".git" / "objects" / "ab").write_text("blob")  # bulk git data: not walked
    changes = diff(before, snapshot(tmp_path))
    assert changes.created == ["sitecustomize.py"]
    assert changes.modified == ["keep.txt"]
    assert changes.deleted == ["gone.txt"]
    assert changes.host_executable == ["sitecustomize.py"]


PATTERNS = [".env", ".env.*", "*.pem", "*.key"]


def tree(root, *paths):
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")


def test_secret_files_are_the_users_not_a_tools(tmp_path):
    tree(tmp_path, ".env", ".env.example", "a/b/c/d/server.pem", "a/b/c/d/e/too-deep.key",
         ".venv/lib/certifi/cacert.pem", ".git/x.key", "node_modules/pkg/test.key", ".tox/py/ca.pem")
    (tmp_path / "link.key").symlink_to(tmp_path / ".env")  # a symlink is not mounted over
    found = workspace.secret_files(tmp_path, PATTERNS, [".env.example"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [".env", "a/b/c/d/server.pem"]


def test_secret_files_from_a_snapshot_match_the_walk(tmp_path):
    tree(tmp_path, ".env", "sub/id.key", ".venv/ca.pem", "node_modules/x.pem", "a/b/c/d/e/deep.key")
    walked = workspace.secret_files(tmp_path, PATTERNS)
    assert workspace.secret_files(tmp_path, PATTERNS, candidates=snapshot(tmp_path)) == walked


def test_one_skip_list_for_the_walks(tmp_path):
    """SKIP_DIRS is never walked; `.git` (but its bulk), `.venv` and `venv` are: the host runs them."""
    tree(tmp_path, *(f"{d}/f.pth" for d in SKIP_DIRS), ".git/modules/m/config", ".git/objects/ab",
         ".venv/lib/evil.pth", "venv/bin/activate")
    assert sorted(snapshot(tmp_path)) == [".git/modules/m/config", ".venv/lib/evil.pth", "venv/bin/activate"]


def test_view_reads_only_and_disarm_creates_the_hooks_folder(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / "venv").symlink_to(tmp_path / ".venv")  # not mounted: the agent could point it anywhere
    view = workspace.view(tmp_path, PATTERNS)
    assert not (tmp_path / ".git" / "hooks").exists()  # reading the view created nothing
    assert view.git_dir == tmp_path / ".git"
    assert view.read_only == (tmp_path / ".git" / "config", tmp_path / ".venv")
    workspace.disarm(tmp_path)
    assert (tmp_path / ".git" / "hooks").is_dir()
    assert tmp_path / ".git" / "hooks" in workspace.view(tmp_path, PATTERNS).read_only


def test_a_git_symlink_is_neither_mounted_nor_disarmed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".git").symlink_to(tmp_path / "elsewhere")
    workspace.disarm(tmp_path)
    assert not (tmp_path / "elsewhere" / "hooks").exists()
    assert workspace.view(tmp_path, PATTERNS).git_dir is None


# --- git anywhere in the folder (RT1-3) ---------------------------------------------------------

@pytest.mark.parametrize(
    "path",
    ["sub/.git/config", "a/b/.git/hooks/post-checkout", "sub/.git/info/attributes", "sub/.git/commondir",
     "sub/.git/config.worktree", "sub/.git/modules/m/config", "sub/.git/modules/m/hooks/pre-commit",
     "sub/.git/worktrees/w/config.worktree", ".git/modules/a/modules/b/config", ".git/worktrees/w/gitdir",
     ".git", "sub/.git", "deep/er/.git", ".git/info/exclude", ".git/unknown-future-file"],
)
def test_git_paths_at_any_depth_are_flagged(path):
    assert is_host_executable(path, 0o100644)


@pytest.mark.parametrize(
    "path",
    [".git/index", ".git/HEAD", ".git/refs/heads/main", ".git/COMMIT_EDITMSG", ".git/packed-refs",
     "sub/.git/ORIG_HEAD", ".git/modules/m/index", ".git/modules/m/refs/heads/x", "docs/git/config",
     "my.git/config", "notes/HEAD"],
)
def test_what_git_writes_in_ordinary_use_is_not_flagged(path):
    assert not is_host_executable(path, 0o100644)


def _changes(tmp_path, before_paths, after_paths):
    tree(tmp_path, *before_paths)
    before = snapshot(tmp_path)
    tree(tmp_path, *after_paths)
    return diff(before, snapshot(tmp_path))


def test_a_config_beside_a_head_is_a_git_dir_anywhere(tmp_path):
    changes = _changes(tmp_path, [], ["cache/g/HEAD", "cache/g/config", "cache/g/hooks/x", "cache/g/notes.txt",
                                      "other/config"])
    assert changes.host_executable == ["cache/g/config", "cache/g/hooks/x"]


def test_a_bare_repo_at_the_root_is_a_git_dir(tmp_path):
    assert _changes(tmp_path, [], ["HEAD", "config"]).host_executable == ["config"]


def test_the_index_is_named_when_a_nested_repo_appears(tmp_path):
    """`git add sub` of a new repo writes a gitlink to the superproject's index: name it with it."""
    changes = _changes(tmp_path, [".git/index"], [".git/index", "sub/.git/HEAD", "sub/.git/config"])
    assert changes.host_executable == [".git/index", "sub/.git/config"]


def test_an_index_changed_alone_is_ordinary_use(tmp_path):
    assert _changes(tmp_path, [".git/index"], [".git/index", "notes.md"]).host_executable == []


def test_a_gitfile_that_appears_names_the_index_too(tmp_path):
    changes = _changes(tmp_path, [".git/index"], [".git/index", "vendor/lib/.git"])
    assert changes.host_executable == [".git/index", "vendor/lib/.git"]


def test_git_bulk_is_skipped_at_any_depth_but_a_submodule_named_objects_is_not(tmp_path):
    tree(tmp_path, "sub/.git/objects/ab", "sub/.git/logs/HEAD", "sub/.git/lfs/x", ".git/modules/m/objects/ab",
         ".git/modules/a/modules/b/objects/ab", ".git/modules/objects/config", "sub/.git/config",
         "src/modules/m/objects/kept.py")
    assert sorted(snapshot(tmp_path)) == [".git/modules/objects/config", "src/modules/m/objects/kept.py",
                                          "sub/.git/config"]


def test_a_bounded_snapshot_says_so(tmp_path, monkeypatch):
    tree(tmp_path, "a", "b", "c")
    assert workspace.complete(snapshot(tmp_path))
    monkeypatch.setattr(workspace, "_MAX_FILES", 2)
    assert not workspace.complete(snapshot(tmp_path))


def _repo(root, rel, hooks=True):
    tree(root, f"{rel}/HEAD", f"{rel}/config")
    if hooks:
        (root / rel / "hooks").mkdir()


def _rels(root, paths):
    return [p.relative_to(root).as_posix() for p in paths]


def test_nested_git_dirs_get_config_and_hooks_read_only(tmp_path):
    for rel in (".git", "proj/.git", "a/b/c/.git", ".git/modules/m"):
        _repo(tmp_path, rel)
    _repo(tmp_path, "a/b/c/d/e/.git")  # deeper than the walk goes
    _repo(tmp_path, "node_modules/x/.git")  # never walked
    ro = _rels(tmp_path, workspace.view(tmp_path, PATTERNS).read_only)
    assert ro == [".git/hooks", ".git/config", "proj/.git/hooks", "proj/.git/config", ".git/modules/m/hooks",
                  ".git/modules/m/config", "a/b/c/.git/hooks", "a/b/c/.git/config"]  # the top-level one first


def test_disarm_creates_hooks_in_every_git_dir_through_no_symlink(tmp_path):
    tree(tmp_path, "proj/.git/config", "outside/x")
    (tmp_path / "link").symlink_to(tmp_path / "outside")  # never walked: not a directory entry
    gits = workspace.GitDirs(("proj/.git", "link"))  # even when told to, no write through a symlink
    workspace.disarm(tmp_path, gits)
    assert (tmp_path / "proj/.git/hooks").is_dir()
    assert not (tmp_path / "outside/hooks").exists()


def test_a_root_gitfile_is_read_only_and_its_git_dir_inside_too(tmp_path):
    _repo(tmp_path, "store/g")
    (tmp_path / ".git").write_text("gitdir: store/g\n")
    view = workspace.view(tmp_path, PATTERNS)
    assert view.git_dir is None
    assert _rels(tmp_path, view.read_only) == ["store/g/hooks", "store/g/config", ".git"]


@pytest.mark.parametrize("target", ["/elsewhere/g", "../out/g", "link/g", "."])
def test_a_gitfile_pointing_outside_keeps_only_the_file_read_only(tmp_path, target):
    (tmp_path / "ws").mkdir()
    root = tmp_path / "ws"
    _repo(tmp_path, "out/g")
    (root / "link").symlink_to(tmp_path / "out")
    (root / ".git").write_text(f"gitdir: {target}\n")
    assert _rels(root, workspace.view(root, PATTERNS).read_only) == [".git"]


def test_a_flood_of_repos_is_capped_and_said(tmp_path):
    for i in range(workspace.MAX_GIT_DIRS + 5):
        _repo(tmp_path, f"r{i:03d}/.git", hooks=False)
    view = workspace.view(tmp_path, PATTERNS)
    assert len(view.read_only) == workspace.MAX_GIT_DIRS  # configs only: no hooks folder yet
    assert "5 more git repositories" in view.notes[0]
    workspace.disarm(tmp_path)
    assert len(workspace.view(tmp_path, PATTERNS).read_only) == 2 * workspace.MAX_GIT_DIRS


# --- red team 2: rebase todos, gitlinks in an index, the snapshot bound, the `.git` mount -----


@pytest.mark.parametrize(
    "path", [".git/rebase-merge/git-rebase-todo", ".git/rebase-apply/patch", ".git/sequencer/todo",
             "sub/.git/rebase-merge/done"],
)
def test_rebase_and_sequencer_state_is_flagged(path):
    """RT2-3: a rebase todo holds `exec` lines that `git rebase --continue` runs on the host."""
    assert is_host_executable(path, 0o100644)


GIT = ["env", "HOME=/nonexistent", "GIT_CONFIG_NOSYSTEM=1", "git", "-c", "safe.directory=*",
       "-c", "user.name=u", "-c", "user.email=u@h", "-c", "init.defaultBranch=main"]


def git(cwd, *args):
    subprocess.run([*GIT, "-C", str(cwd), *args], check=True, capture_output=True)


def _index_repo(root, version=None):
    """A real repository (git generates the fixture; pimagic never runs git on the host)."""
    git(root, "init", "-q", "--template=")
    if version:
        git(root, "update-index", "--index-version", str(version))
    tree(root, "a.txt", "deep/er/b.txt")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")


def _gitlink(root, rel, add=True):
    (root / rel).mkdir(parents=True)
    git(root / rel, "init", "-q", "--template=")
    git(root / rel, "commit", "-q", "--allow-empty", "-m", "s")
    if add:
        git(root, "add", "-f", rel)


@pytest.mark.parametrize("version", [None, 2, 3, 4])
def test_a_changed_index_with_a_gitlink_is_flagged(tmp_path, version):
    """RT2-1: a gitlink (mode 160000) in an index makes the host's `git status` recurse into that
    repo and run its config, even under node_modules/ (never walked)."""
    _index_repo(tmp_path, version)
    if version == 3:
        tree(tmp_path, "intent.txt")
        git(tmp_path, "add", "-N", "intent.txt")  # intent-to-add: an extended-flags entry (v3)
    before = snapshot(tmp_path)
    _gitlink(tmp_path, "node_modules/evil")
    data = (tmp_path / ".git/index").read_bytes()
    assert int.from_bytes(data[4:8], "big") == (version or 2)
    assert workspace.index_has_gitlink(data)
    assert diff(before, snapshot(tmp_path), tmp_path).host_executable == [".git/index"]


@pytest.mark.parametrize("version", [None, 3, 4])
def test_an_ordinary_commit_changes_the_index_without_a_warning(tmp_path, version):
    _index_repo(tmp_path, version)
    if version == 3:
        tree(tmp_path, "intent.txt")
        git(tmp_path, "add", "-N", "intent.txt")
    before = snapshot(tmp_path)
    tree(tmp_path, "zz/new.txt", "a0.txt")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "two")
    assert not workspace.index_has_gitlink((tmp_path / ".git/index").read_bytes())
    changes = diff(before, snapshot(tmp_path), tmp_path)
    assert ".git/index" in changes.modified and changes.host_executable == []


def test_a_nested_repos_index_with_a_gitlink_is_flagged(tmp_path):
    (tmp_path / "proj").mkdir()
    _index_repo(tmp_path / "proj")
    _gitlink(tmp_path / "proj", "vendor/x", add=False)  # a repo the user had: only the `git add` is new
    before = snapshot(tmp_path)
    git(tmp_path / "proj", "add", "-f", "vendor/x")
    assert diff(before, snapshot(tmp_path), tmp_path).host_executable == ["proj/.git/index"]


@pytest.mark.parametrize("data", [b"", b"DIRC", b"XXXX\0\0\0\x02\0\0\0\0", b"DIRC\0\0\0\x05\0\0\0\0",
                                  b"DIRC\0\0\0\x02\0\0\0\x01" + b"\0" * 40])
def test_an_index_that_does_not_parse_counts_as_a_gitlink(data):
    assert workspace.index_has_gitlink(data)


def test_an_index_behind_a_symlink_is_not_read_and_is_flagged(tmp_path):
    tree(tmp_path, ".git/HEAD", "elsewhere/index")
    (tmp_path / ".git/index").symlink_to(tmp_path / "elsewhere/index")
    assert workspace._gitlinked_index(tmp_path, ".git/index")


def test_a_flood_of_files_hides_no_host_run_file(tmp_path):
    """RT2-2: 60,000 files that the walk reaches first still leave `proj/.git/commondir` (and a bare
    git dir's config) reported, and the snapshot says it was cut."""
    flood = tmp_path / "0flood"
    flood.mkdir()
    for i in range(60_000):
        (flood / f"{i:05}").touch()
    tree(tmp_path, "proj/.git/HEAD", "proj/.git/config", "zflood/x")
    before = snapshot(tmp_path)
    assert not workspace.complete(before)
    tree(tmp_path, "proj/.git/commondir", "0flood/zz/common/HEAD", "0flood/zz/common/config", "late.txt")
    after = snapshot(tmp_path)
    assert not workspace.complete(after) and workspace.bound_note(before, after).startswith("more than 50,000 files")
    changes = diff(before, after, tmp_path)
    assert changes.host_executable == ["0flood/zz/common/config", "proj/.git/commondir"]
    assert sum(1 for r in after if r.startswith("0flood/0")) <= workspace._MAX_FILES


def test_only_ordinary_files_count_against_the_bound(tmp_path, monkeypatch):
    tree(tmp_path, "a", "b", "c", "Makefile", ".git/config", "x/.envrc")
    monkeypatch.setattr(workspace, "_MAX_FILES", 3)
    snap = snapshot(tmp_path)
    assert workspace.complete(snap) and workspace.bound_note(snap) is None and len(snap) == 6
    tree(tmp_path, "d")
    assert not workspace.complete(snapshot(tmp_path))


def _git_sandbox(tmp_path, monkeypatch, mounted):
    """A Sandbox whose in-container `stat` reports the real workspace and models file, and the
    directory `mounted` for /workspace/.git: the comparison `_verify_mounts` makes, without an engine.
    Returns it with the host `.git`'s (st_dev, st_ino), as the view took it."""
    from pimagic import statedir
    from pimagic.config import load_settings
    from pimagic.sandbox import Sandbox

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIMAGIC_DATA_ROOT", str(tmp_path / "data"))
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    settings = load_settings(ws, environ={})
    box = Sandbox(settings)
    models = statedir.view_dir(settings) / statedir.MODELS_FILE
    models.parent.mkdir(parents=True, exist_ok=True)
    models.write_text("{}")

    def fake_exec(cmd, **_):
        assert cmd[-1] == "/workspace/.git"
        seen = [os.stat(ws), os.stat(models), os.stat(mounted(ws))]
        return 0, "".join(f"{s.st_dev} {s.st_ino}\n" for s in seen).encode(), b""

    monkeypatch.setattr(box, "exec", fake_exec)
    return box, workspace.view(ws, []).git_id


def test_verify_mounts_accepts_the_git_dir_the_view_saw(tmp_path, monkeypatch):
    box, git_id = _git_sandbox(tmp_path, monkeypatch, lambda ws: ws / ".git")
    assert git_id is not None
    box._verify_mounts(None, agent_dir=None, git_dir=git_id)


def test_verify_mounts_refuses_another_git_dir(tmp_path, monkeypatch):
    """RT2-4: `.git` is mounted read-write from its host path: what was mounted must be the `.git`
    the view checked, not what a swap put there (the caller then removes the container)."""
    box, git_id = _git_sandbox(tmp_path, monkeypatch, lambda ws: ws.parent)
    with pytest.raises(WorkspaceReplacedError, match=r"/workspace/\.git is not"):
        box._verify_mounts(None, agent_dir=None, git_dir=git_id)
