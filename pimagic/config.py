"""Settings: one traitlets object shared by `.env`, the environment, `%config`
and the widgets. No Docker and no I/O beyond reading the `.env` file."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

from traitlets import Bool, Float, Int, List, Unicode, validate
from traitlets.config import Configurable

from .errors import ConfigError

THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
_MODEL_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/\S+$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# name in .env / environment -> (trait name, parser)
_ENV_KEYS: dict[str, str] = {
    "GITHUB_TOKEN": "github_token",
    "GIT_NAME": "git_name",
    "GIT_EMAIL": "git_email",
    "GIT_GPG_KEY": "git_gpg_key",
    "GIT_GPG_SIGN": "git_gpg_sign",
    "PARANOID_MODE": "paranoid",
    "HOST_UID": "uid",
    "HOST_GID": "gid",
    "PIMAGIC_IMAGE": "image",
    "PIMAGIC_BASE_IMAGE": "base_image",
    "PIMAGIC_EXTRA_CA_CERTS": "extra_ca_certs",
    "PIMAGIC_TOOLCHAIN": "toolchain",
    "PIMAGIC_PI_DATA_DIR": "pi_data_dir",
    "PIMAGIC_MEMORY": "memory",
    "PIMAGIC_CPUS": "cpus",
    "PIMAGIC_PIDS_LIMIT": "pids_limit",
    "PIMAGIC_MODEL": "model",
    "PIMAGIC_THINKING": "thinking",
    "PIMAGIC_SECRET_PATTERNS": "secret_patterns",
    "PIMAGIC_IDLE_TIMEOUT": "idle_timeout",
    "PIMAGIC_WRITE_LIMIT": "workspace_write_limit",
}


def _default_uid() -> int:
    # Root on the host must not become root in the sandbox: a root agent owns
    # the root-only secret files. Fall back to the image's unprivileged user.
    uid = os.getuid() if hasattr(os, "getuid") else 1000
    return uid if uid != 0 else 1000


def _default_gid() -> int:
    gid = os.getgid() if hasattr(os, "getgid") else 1000
    return gid if os.getuid() != 0 else 1000


class PimagicSettings(Configurable):
    """Everything that shapes the sandbox. `%config PimagicSettings.paranoid = True`."""

    workspace = Unicode(help="Folder bind-mounted at /workspace (default: the current directory).").tag(
        config=True
    )
    image = Unicode("", help="Sandbox image tag; empty = derived from the build context.").tag(config=True)
    base_image = Unicode("node:22-bookworm-slim", help="Base image (Node >= 22.19) for builds.").tag(
        config=True
    )
    extra_ca_certs = List(Unicode(), help="PEM files trusted by the image build and at run time.").tag(
        config=True
    )
    toolchain = Bool(False, help="Keep a C toolchain (build-essential) in the image.").tag(config=True)
    paranoid = Bool(False, help="Block gh auth|repo|secret|ssh-key|gpg-key|config.").tag(config=True)
    # Not config=True on purpose: `%config PimagicSettings` prints every config trait's value into
    # the notebook (and so into the saved .ipynb). The token comes from `.env` or the environment.
    github_token = Unicode("", help="GitHub token, handed to the vault only.")
    git_name = Unicode("").tag(config=True)
    git_email = Unicode("").tag(config=True)
    git_gpg_key = Unicode("").tag(config=True)
    git_gpg_sign = Bool(False).tag(config=True)
    uid = Int(help="Host uid the agent runs as (files it writes are yours).").tag(config=True)
    gid = Int(help="Host gid the agent runs as.").tag(config=True)
    pi_data_dir = Unicode("", help="Host dir kept as pi's agent dir; empty = per-workspace default.").tag(
        config=True
    )
    memory = Unicode("4g", help="Container memory limit (docker units: 512m, 4g).").tag(config=True)
    cpus = Float(2.0, help="CPU limit in cores.").tag(config=True)
    pids_limit = Int(512, help="Max processes in the sandbox (stops fork bombs).").tag(config=True)
    tmpfs_size = Unicode("512m", help="Size of each tmpfs (/tmp, home).").tag(config=True)
    model = Unicode("", help="provider/model-id for pi; empty = pi's default.").tag(config=True)
    thinking = Unicode("", help="Thinking level; empty = pi's default.").tag(config=True)
    secret_patterns = List(
        Unicode(),
        default_value=[".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", ".netrc", ".pypirc"],
        help="Glob patterns of workspace files hidden from the sandbox.",
    ).tag(config=True)
    keep_visible = List(Unicode(), default_value=[".env.example"]).tag(config=True)
    env_notes: tuple[str, ...] = ()  # set by load_settings: a refused or partly ignored `.env`
    turn_timeout = Float(1800.0, help="Default seconds a %%pi cell may run.").tag(config=True)
    idle_timeout = Float(
        120.0, help="Seconds the sandbox outlives its last attached notebook or shell (0 = forever)."
    ).tag(config=True)
    workspace_write_limit = Unicode(
        "2g", help="Most the workspace may grow while a sandbox runs, and its largest file (0 = no bound)."
    ).tag(config=True)

    def _uid_default(self) -> int:
        return _default_uid()

    def _gid_default(self) -> int:
        return _default_gid()

    def _workspace_default(self) -> str:
        return os.getcwd()

    @validate("uid")
    def _check_uid(self, proposal):
        if proposal.value <= 0:
            raise ConfigError("HOST_UID", proposal.value, "the agent must not run as root (uid 0)")
        return proposal.value

    @validate("gid")
    def _check_gid(self, proposal):
        if proposal.value < 0:
            raise ConfigError("HOST_GID", proposal.value, "must be >= 0")
        return proposal.value

    @validate("memory")
    def _check_memory(self, proposal):
        if not _MEMORY_RE.match(proposal.value):
            raise ConfigError("PIMAGIC_MEMORY", proposal.value, "expected a size like 512m or 4g")
        return proposal.value

    @validate("workspace_write_limit")
    def _check_write_limit(self, proposal):
        if not _MEMORY_RE.match(proposal.value):
            raise ConfigError("PIMAGIC_WRITE_LIMIT", proposal.value, "expected a size like 512m or 2g (0 = no bound)")
        return proposal.value

    @validate("idle_timeout")
    def _check_idle_timeout(self, proposal):
        if proposal.value < 0:
            raise ConfigError("PIMAGIC_IDLE_TIMEOUT", proposal.value, "expected seconds >= 0 (0 = never stop)")
        return proposal.value

    @validate("cpus")
    def _check_cpus(self, proposal):
        if not 0 < proposal.value <= 512:
            raise ConfigError("PIMAGIC_CPUS", proposal.value, "expected a number of cores > 0")
        return proposal.value

    @validate("pids_limit")
    def _check_pids(self, proposal):
        if proposal.value < 32:
            raise ConfigError("PIMAGIC_PIDS_LIMIT", proposal.value, "pi needs at least 32 processes")
        return proposal.value

    @validate("model")
    def _check_model(self, proposal):
        if proposal.value and not _MODEL_RE.match(proposal.value):
            raise ConfigError("PIMAGIC_MODEL", proposal.value, "expected provider/model-id")
        return proposal.value

    @validate("thinking")
    def _check_thinking(self, proposal):
        if proposal.value and proposal.value not in THINKING_LEVELS:
            raise ConfigError("PIMAGIC_THINKING", proposal.value, f"expected one of {', '.join(THINKING_LEVELS)}")
        return proposal.value

    # --- derived values -------------------------------------------------

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).expanduser().resolve()

    @property
    def workspace_id(self) -> str:
        """Stable short id of the workspace folder: same folder, same container."""
        return hashlib.sha256(str(self.workspace_path).encode()).hexdigest()[:12]

    @property
    def container_name(self) -> str:
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", self.workspace_path.name).strip("-.")[:40] or "root"
        return f"pimagic-{slug}-{self.workspace_id}"

    @property
    def pi_data_path(self) -> Path:
        """Host dir mounted read-write as pi's agent dir (sessions, auth.json) for this workspace.

        Its parent is the folder's host-only state dir (pi config, relays, conversations).
        It must lie inside pimagic's data root and outside the workspace: the host creates,
        chowns and mounts it, so no setting may point it at a directory it does not own."""
        root = pimagic_data_root()
        if not self.pi_data_dir:
            return root / "workspaces" / f"{self.workspace_path.name}-{self.workspace_id}" / "agent"
        path = Path(self.pi_data_dir).expanduser().resolve()
        if not (path.is_relative_to(root) and path.parent != root and path != root):
            raise ConfigError(
                "PIMAGIC_PI_DATA_DIR", str(path), f"must be a directory inside pimagic's data root {root}",
                hint="leave it empty (the per-folder default), pick a path under the data root, "
                "or set PIMAGIC_DATA_ROOT in the kernel's environment",
            )
        if path.is_relative_to(self.workspace_path):
            raise ConfigError(
                "PIMAGIC_PI_DATA_DIR", str(path), "must not be inside the workspace (the agent writes there)",
            )
        return path

    @property
    def write_limit_bytes(self) -> int:
        """`workspace_write_limit` in bytes; 0 = no bound."""
        return parse_size(self.workspace_write_limit)

    def __repr__(self) -> str:  # never print the token
        token = "<set>" if self.github_token else "<unset>"
        return f"PimagicSettings(workspace={self.workspace!r}, image={self.image!r}, token={token})"


def pimagic_data_root() -> Path:
    """Where pimagic keeps per-folder state: `PIMAGIC_DATA_ROOT` from the process environment
    (never from `.env`), else `$XDG_DATA_HOME/pimagic` (`~/.local/share/pimagic`)."""
    explicit = os.environ.get("PIMAGIC_DATA_ROOT")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (base / "pimagic").expanduser().resolve()


def parse_size(text: str) -> int:
    """A size in Docker's units (512m, 2g, 1.5g, 4096) in bytes."""
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def _parse_bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(key, value, "expected true or false")


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(key, value, "expected a whole number") from None


def _parse_float(key: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigError(key, value, "expected a number") from None


def _coerce(settings: PimagicSettings, key: str, trait: str, raw: str) -> object:
    kind = type(settings.traits()[trait])
    if kind is Bool:
        return _parse_bool(key, raw)
    if kind is Int:
        return _parse_int(key, raw)
    if kind is Float:
        return _parse_float(key, raw)
    if kind is List:
        return [p for p in re.split("[," + re.escape(os.pathsep) + "]", raw) if p.strip()]
    return raw.strip()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file strictly: a line python-dotenv cannot parse is an error."""
    return parse_env(path.read_bytes(), path)


def parse_env(data: bytes, path: Path) -> dict[str, str]:
    """Parse `.env` content strictly (`path` names it in errors, which never echo a value)."""
    from dotenv.parser import parse_stream

    values: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "...", f"not UTF-8 text ({e.reason})") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise ConfigError(
                f"{path} line {line}",
                None,
                "cannot parse this line (expected KEY=value)",
                hint=f"fix or remove that line in {path}",
            )
        if binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return values


def apply_env(settings: PimagicSettings, values: Mapping[str, str], source: str) -> None:
    """Set traits from KEY=value pairs; a bad value names its key and its source."""
    for key, trait in _ENV_KEYS.items():
        if key not in values:
            continue
        try:
            setattr(settings, trait, _coerce(settings, key, trait, values[key]))
        except ConfigError as e:
            e.hint = e.hint or f"fix {key} in {source}"
            e.args = (str(e),)
            raise
        except Exception as e:  # traitlets TraitError and friends
            raise ConfigError(key, values[key], str(e), hint=f"fix {key} in {source}") from None


def load_settings(
    workspace: str | os.PathLike | None = None,
    *,
    env_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    parent: object | None = None,
    **overrides: object,
) -> PimagicSettings:
    """Settings for a workspace: defaults < `.env` < environment < overrides.

    The `.env` values are read, not exported: the token never enters this
    process's environment, so child processes cannot inherit it. A `.env` inside the
    workspace is loaded only when the host can vouch for it (pimagic.envtrust); what was
    refused or ignored is in `settings.env_notes`, for the next cell to show.
    """
    settings = PimagicSettings(parent=parent)
    if workspace is not None:
        settings.workspace = str(Path(workspace).expanduser().resolve())
    environ = environ if environ is not None else os.environ

    def apply_trusted() -> None:
        apply_env(settings, environ, "the environment")
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)

    apply_trusted()  # first: the trust records' location may not depend on the file being judged
    values, notes, source = _env_file_values(settings, env_file)
    if values:
        apply_env(settings, values, source)
        apply_trusted()  # the environment and explicit overrides still win
    settings.env_notes = tuple(notes)
    return settings


def _env_file_values(
    settings: PimagicSettings, env_file: str | os.PathLike | None
) -> tuple[dict[str, str], list[str], str]:
    """(values to apply, notes for the user, source name) of the settings file."""
    from . import envtrust

    path = Path(env_file) if env_file else settings.workspace_path / ".env"
    if not env_file and not os.path.lexists(path):  # the folder is resolved: lstat of one name
        return {}, [], str(path)
    verdict = envtrust.check(path, settings)  # any file a sandbox could write, not only the workspace's
    if verdict.missing:  # an --env-file: its path is walked without following a sandbox's symlink
        raise ConfigError("env_file", str(env_file), "no such file")
    if not verdict.trusted:
        return _tightening_only(verdict), [envtrust.refusal_note(verdict, _key_names(verdict))], str(path)
    values = parse_env(verdict.env.data, path)  # type: ignore[union-attr]
    if not verdict.writable:
        return values, [], str(path)  # the user's own file on the host: all keys
    host_only = sorted(k for k in values if k in envtrust.HOST_ONLY_KEYS)
    notes = [envtrust.host_only_note(path, host_only)] if host_only else []
    return {k: v for k, v in values.items() if k not in envtrust.HOST_ONLY_KEYS}, notes, str(path)


def _tightening_only(verdict) -> dict[str, str]:
    """From a refused file, only what can make the sandbox stricter: `PARANOID_MODE=true`. The user
    who edits `.env` while a sandbox runs must not lose paranoid mode because the file is refused."""
    if verdict.env is None:
        return {}
    try:
        raw = parse_env(verdict.env.data, verdict.path).get("PARANOID_MODE")
        return {"PARANOID_MODE": "true"} if raw is not None and _parse_bool("PARANOID_MODE", raw) else {}
    except ConfigError:
        return {}


def _key_names(verdict) -> list[str] | None:
    """pimagic's keys a refused file would set (names only); None when it cannot be parsed."""
    if verdict.env is None:
        return None
    try:
        return sorted(k for k in parse_env(verdict.env.data, verdict.path) if k in _ENV_KEYS)
    except ConfigError:
        return None


def trust_env_file(
    settings: PimagicSettings, env_file: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None
) -> tuple[Path, str, list[str], list[str]]:
    """The user vouches for the folder's `.env` (or `env_file`) as it is now: record its hash in the
    host-only ledger and load it into `settings` (the environment still wins).

    Returns (path, sha256, keys loaded, notes). A file that is not a plain regular file, or
    that does not parse, is refused with ConfigError: nothing is recorded."""
    from . import envtrust

    path = Path(env_file) if env_file else settings.workspace_path / ".env"
    verdict = envtrust.check(path, settings)
    if verdict.missing:
        raise ConfigError(str(path), None, "no such file", hint="write the .env first, then trust it")
    if not verdict.writable:
        raise ConfigError(str(path), None, "outside every sandbox's folder: it is always loaded, nothing to trust")
    if verdict.env is None:  # a symlink inside the folder, a FIFO, unreadable...: nothing to vouch for
        raise ConfigError(str(path), None, verdict.reason, hint="replace it with a plain file, then trust it")
    env = verdict.env
    values = parse_env(env.data, path)
    host_only = sorted(k for k in values if k in envtrust.HOST_ONLY_KEYS)
    loaded = {k: v for k, v in values.items() if k in _ENV_KEYS and k not in envtrust.HOST_ONLY_KEYS}
    apply_env(PimagicSettings(workspace=settings.workspace), loaded, str(path))  # a bad value: record nothing
    digest = envtrust.accept(env.path, env.data)
    apply_env(settings, loaded, str(path))
    apply_env(settings, environ if environ is not None else os.environ, "the environment")
    settings.env_notes = ()
    return path, digest, sorted(loaded), [envtrust.host_only_note(path, host_only)] if host_only else []
