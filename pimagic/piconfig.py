"""pi's own config files in the workspace's agent dir (`models.json`,
`settings.json`): merged, never clobbered, so hand-written files (the seed's
offline recipe) keep working. Pure file I/O; no Docker."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

MODELS_FILE = "models.json"
SETTINGS_FILE = "settings.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` ({} when missing); a broken file is an error, not silently replaced."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            str(path), None, f"not valid JSON (line {e.lineno}: {e.msg})",
            hint="fix the file by hand; pimagic will not overwrite it",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a JSON object at the top level")
    return data


def write_json(path: Path, data: Mapping[str, Any], *, uid: int | None = None, gid: int | None = None) -> None:
    """Atomic write (rename), keeping the file usable by the sandbox's uid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    if uid is not None and os.getuid() == 0:
        os.chown(tmp, uid, gid if gid is not None else uid)
    os.replace(tmp, path)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`, recursing into objects; keys only in `base` survive."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_provider(agent_dir: Path, name: str, provider: Mapping[str, Any], **owner: int) -> None:
    """Add or update one provider in models.json; other providers and keys are kept.

    Models of the provider are merged by id, so a model the user tuned by hand
    keeps its extra fields.
    """
    path = agent_dir / MODELS_FILE
    data = read_json(path)
    providers = dict(data.get("providers") or {})
    current = dict(providers.get(name) or {})
    merged = deep_merge(current, {k: v for k, v in provider.items() if k != "models"})
    if "models" in provider:
        by_id = {m.get("id"): dict(m) for m in current.get("models") or [] if isinstance(m, Mapping)}
        for model in provider["models"]:
            by_id[model["id"]] = deep_merge(by_id.get(model["id"], {}), model)
        merged["models"] = list(by_id.values())
    providers[name] = merged
    data["providers"] = providers
    write_json(path, data, **owner)


def merge_settings(agent_dir: Path, values: Mapping[str, Any], **owner: int) -> None:
    """Merge keys into settings.json (e.g. defaultProvider, defaultModel, retry)."""
    path = agent_dir / SETTINGS_FILE
    write_json(path, deep_merge(read_json(path), values), **owner)


def configured_providers(agent_dir: Path) -> dict[str, Any]:
    return dict(read_json(agent_dir / MODELS_FILE).get("providers") or {})
