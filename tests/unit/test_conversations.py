"""Which conversation a kernel continues: the notebook's file (inode + birth time), not its name.
Real files on the test's disk; the store is the host-only `conversations/` dir of a state dir."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pimagic import conversations
from pimagic.conversations import (
    Claim,
    ConversationStore,
    FileId,
    Notebook,
    file_id,
    greeting,
    notebook_at,
    prompts_text,
)
from pimagic.magics import conversation_key


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "state" / "conversations")


def new_notebook(path: Path, text: str = "{}") -> Notebook:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return notebook_at(path)


def jupyter_save(path: Path, text: str) -> None:
    """What jupyter_server's default atomic_writing does: copy aside, rewrite in place, drop the copy."""
    backup = path.with_name(f".~{path.name}")
    backup.write_bytes(path.read_bytes())
    with open(path, "w") as f:
        f.write(text)
    backup.unlink()


def test_a_renamed_notebook_keeps_its_conversation_and_a_new_one_at_the_old_name_starts_fresh(folder, store):
    untitled = folder / "Untitled.ipynb"
    first = store.claim(new_notebook(untitled))
    assert first.found is None and first.session_id.startswith("nb-")
    jupyter_save(untitled, '{"cells": []}')  # saves keep the inode
    assert store.claim(notebook_at(untitled)) == Claim(first.session_id, "file")

    snake = folder / "snake.ipynb"
    os.rename(untitled, snake)  # JupyterLab's rename (shutil.move within one file system)
    again = new_notebook(untitled)  # File > New: another Untitled.ipynb
    fresh = store.claim(again)
    assert fresh.found is None and fresh.session_id != first.session_id
    assert store.claim(notebook_at(snake)) == Claim(first.session_id, "file")
    assert store.claim(notebook_at(untitled)) == Claim(fresh.session_id, "file")  # and each keeps its own


def test_the_renamed_notebook_is_found_even_before_its_next_kernel_runs(folder, store):
    untitled = folder / "Untitled.ipynb"
    first = store.claim(new_notebook(untitled))
    os.rename(untitled, folder / "snake.ipynb")
    assert store.claim(new_notebook(untitled)).session_id != first.session_id  # the old file lives on
    assert store.claim(notebook_at(folder / "snake.ipynb")).session_id == first.session_id


def test_a_file_replaced_at_its_path_continues_the_paths_conversation(folder, store):
    """use_atomic_writing setups, editors that save by rename, `git checkout`: a new inode, and the
    old file lives nowhere else."""
    nb = folder / "analysis.ipynb"
    first = store.claim(new_notebook(nb))
    tmp = folder / ".analysis.ipynb.tmp"
    tmp.write_text('{"cells": [1]}')
    os.replace(tmp, nb)
    assert notebook_at(nb).file != first and notebook_at(nb).file is not None
    assert store.claim(notebook_at(nb)) == Claim(first.session_id, "path")
    assert store.claim(notebook_at(nb)) == Claim(first.session_id, "file")  # re-keyed to the new file


def test_a_notebook_moved_across_folders_keeps_its_conversation(folder, store):
    old = folder / "a" / "report.ipynb"
    first = store.claim(new_notebook(old))
    moved = folder / "b" / "deeper" / "report.ipynb"
    moved.parent.mkdir(parents=True)
    os.rename(old, moved)
    # a new notebook at the old path, before the moved one's kernel ran: the moved file is found
    # in the folder's tree, so the new one does not take the conversation
    assert store.claim(new_notebook(old), search=(str(folder),)).session_id != first.session_id
    assert store.claim(notebook_at(moved), search=(str(folder),)) == Claim(first.session_id, "file")


def test_without_searching_the_tree_a_moved_notebook_is_not_found(folder, store):
    """Control for the test above: the tree search is what tells the moved file is alive."""
    old = folder / "a" / "report.ipynb"
    first = store.claim(new_notebook(old))
    (folder / "b").mkdir()
    os.rename(old, folder / "b" / "report.ipynb")
    assert store.claim(new_notebook(old)) == Claim(first.session_id, "path")


def test_a_symlink_is_known_by_the_link_not_by_the_file_it_points_to(folder, store, tmp_path):
    target = folder / "real.ipynb"
    real = store.claim(new_notebook(target))
    link = folder / "link.ipynb"
    link.symlink_to(target)
    seen = notebook_at(link)
    assert seen.file is not None and seen.file.ino == os.lstat(link).st_ino != os.stat(link).st_ino
    assert store.claim(seen).session_id != real.session_id
    outside = tmp_path / "host-file"  # a link out of the workspace is stat'ed as a link, never followed
    outside.write_text("host")
    (folder / "out.ipynb").symlink_to(outside)
    assert notebook_at(folder / "out.ipynb").file.ino == os.lstat(folder / "out.ipynb").st_ino


def test_a_reused_inode_number_does_not_continue_a_deleted_notebooks_conversation(folder, store):
    deleted = folder / "old.ipynb"
    first = store.claim(new_notebook(deleted))
    old_id = notebook_at(deleted).file
    deleted.unlink()
    newcomer = new_notebook(folder / "new.ipynb")  # ext4 hands the freed inode out again at once
    assert old_id is not None and old_id.birth is not None, "this file system keeps no birth time"
    assert newcomer.file is not None
    assert store.claim(newcomer).session_id != first.session_id


def test_inode_reuse_is_told_from_a_rename_by_birth_time(store, folder):
    """The same decision on given identities (whatever the test disk reuses)."""
    a = Notebook(str(folder / "a.ipynb"), FileId(7, 42, 1_000))
    first = store.claim(a)
    assert store.claim(Notebook(str(folder / "b.ipynb"), FileId(7, 42, 1_000))) == Claim(first.session_id, "file")
    reused = store.claim(Notebook(str(folder / "c.ipynb"), FileId(7, 42, 2_000)))
    assert reused.session_id != first.session_id
    # where no birth time is known, the inode alone decides (the documented limit)
    assert store.claim(Notebook(str(folder / "d.ipynb"), FileId(7, 42, None))).session_id == reused.session_id


def test_a_kernel_whose_path_went_stale_continues_by_path(folder, store):
    """No file at the path the kernel was given (renamed before the extension loaded)."""
    nb = folder / "Untitled.ipynb"
    first = store.claim(new_notebook(nb))
    os.rename(nb, folder / "snake.ipynb")
    assert store.claim(notebook_at(nb)) == Claim(first.session_id, "path")


def test_a_notebook_without_a_file_is_keyed_by_its_path(folder, store):
    console = notebook_at(folder / "Console 1")
    assert console.file is None
    first = store.claim(console)
    assert store.claim(notebook_at(folder / "Console 1")) == Claim(first.session_id, "path")


def test_new_session_is_recorded_for_the_notebook(folder, store):
    nb = new_notebook(folder / "x.ipynb")
    store.claim(nb)
    store.save(nb, "pi-made-id")
    assert store.claim(notebook_at(folder / "x.ipynb")) == Claim("pi-made-id", "file")


def test_a_conversation_kept_under_the_old_name_key_is_taken_over_once(folder, store):
    store.folder.mkdir(parents=True)
    (store.folder / "nb-Untitled.json").write_text(json.dumps({"session_id": "nb-Untitled-abc"}))
    assert store.claim(new_notebook(folder / "Untitled.ipynb")) == Claim("nb-Untitled-abc", "legacy")
    assert not (store.folder / "nb-Untitled.json").exists()
    os.rename(folder / "Untitled.ipynb", folder / "snake.ipynb")
    assert store.claim(new_notebook(folder / "Untitled.ipynb")).session_id != "nb-Untitled-abc"


def test_named_conversations_keep_their_files(store):
    first = store.claim_key("analysis")
    assert first.found is None and first.session_id.startswith("analysis-")
    assert store.claim_key("analysis") == Claim(first.session_id, "key")
    store.save_key("analysis", "other")
    assert store.claim_key("analysis") == Claim("other", "key")
    assert json.loads((store.folder / "analysis.json").read_text()) == {"session_id": "other"}


def test_kernels_of_one_folder_claiming_at_once_lose_no_record(folder, store):
    notebooks = [new_notebook(folder / f"n{i}.ipynb") for i in range(8)]
    claims: dict[int, Claim] = {}
    threads = [threading.Thread(target=lambda i=i: claims.__setitem__(i, store.claim(notebooks[i]))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, nb in enumerate(notebooks):
        assert store.claim(nb) == Claim(claims[i].session_id, "file")


def test_a_broken_index_starts_again_and_odd_entries_are_refused(folder, store):
    store.folder.mkdir(parents=True)
    (store.folder / conversations.INDEX_FILE).write_text("{not json")
    assert store.claim(new_notebook(folder / "a.ipynb")).found is None
    os.unlink(store.folder / conversations.INDEX_FILE)
    os.symlink(folder / "a.ipynb", store.folder / conversations.INDEX_FILE)  # never followed
    with pytest.raises(conversations.hostfs.HostFileError):
        store.claim(notebook_at(folder / "a.ipynb"))


def test_the_search_is_bounded(folder, monkeypatch):
    monkeypatch.setattr(conversations, "SCAN_MAX_ENTRIES", 50)
    for i in range(200):
        (folder / f"f{i:03}").write_text("")
    (folder / "zz").mkdir()
    hidden = new_notebook(folder / "zz" / "nb.ipynb").file
    assert hidden is not None
    assert conversations.lives_in(hidden, [], [str(folder)]) is False  # gave up after 50 entries
    monkeypatch.setattr(conversations, "SCAN_MAX_ENTRIES", 1000)
    assert conversations.lives_in(hidden, [], [str(folder)]) is True


def test_relative_session_names_resolve_in_the_kernels_folder(folder):
    (folder / "nb.ipynb").write_text("{}")
    nb = notebook_at("sub/nb.ipynb", cwd=str(folder))
    assert nb.path == str(folder / "nb.ipynb") and nb.file is not None


def test_the_kernel_keys_its_conversation_on_the_notebook_file_jupyter_names(folder, monkeypatch):
    nb = folder / "a.ipynb"
    nb.write_text("{}")
    monkeypatch.delenv("PIMAGIC_CONVERSATION", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    key = conversation_key(None)
    assert key == Notebook(str(nb), file_id(nb)) and key.file is not None
    monkeypatch.setenv("PIMAGIC_CONVERSATION", "shared work")  # named explicitly: that name
    assert conversation_key(None) == "shared work"
    monkeypatch.delenv("PIMAGIC_CONVERSATION")
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert conversation_key(SimpleNamespace(user_ns={"__vsc_ipynb_file__": str(nb)})) == key  # VS Code
    unnamed = conversation_key(SimpleNamespace(user_ns={}))
    assert isinstance(unnamed, str) and unnamed.startswith("kernel-") and unnamed != conversation_key(None)


# --- what the first cell says --------------------------------------------------------------------


def test_greeting_lines():
    found = Claim("nb-1", "file")
    assert greeting("created", found, 3) == (
        "sandbox started; continuing this notebook's conversation: 3 earlier prompts (`%pi new` starts fresh)")
    assert greeting("joined", found, 1) == (
        "joined the running sandbox; continuing this notebook's conversation: 1 earlier prompt "
        "(`%pi new` starts fresh)")
    assert greeting("replaced", Claim("nb-2"), 0).startswith(
        "started a new sandbox; new conversation for this notebook")
    assert greeting("running", found, None) == "continuing this notebook's conversation (`%pi new` starts fresh)"
    assert greeting(None, found, 0) == (
        "new conversation for this notebook (its next kernels continue it, also after a rename)")
    assert greeting("created", None, None) == "sandbox started"
    assert greeting(None, Claim("kernel-ab-1"), 0, kind="kernel").startswith(
        "new conversation for this kernel (no notebook file is known")
    assert greeting(None, Claim("work-1", "key"), 2, kind="named") == (
        "continuing conversation work-1: 2 earlier prompts (`%pi new` starts fresh)")
    assert greeting(None, Claim("work-1"), 0, kind="named") == "new conversation work-1"


def test_prompts_text_counts_prompts_not_messages():
    assert [prompts_text(n) for n in (0, 1, 5, None)] == ["0 prompts", "1 prompt", "5 prompts", "prompts unknown"]
