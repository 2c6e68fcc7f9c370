"""Settings: one traitlets object shared by `.env`, the environment, `%config`
and the widgets. No Docker and no I/O beyond reading the `.env` file (and, through
pimagic.policy, the folder's host-only paranoid-mode record)."""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from traitlets import Bool, Float, Int, List, Unicode, validate
from traitlets.config import Configurable

from . import workspace_pin
from .errors import ConfigError, PimagicError

# pi's thinking levels (settings.json and set_thinking_level); "xhigh" and "max" only on models
# that support them. The one list: the magics, the panel and PIMAGIC_THINKING all check against it.
THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh", "max")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
_PROVIDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
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
    "PIMAGIC_WARM_START": "warm_start",
    "PIMAGIC_FAIL_ON_ERROR": "fail_on_error",
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
    fail_on_error = Bool(
        True, help="A failed turn (model server down, model error, timeout) fails the cell, so Run All "
        "stops; `%%pi --keep-going` overrides it for one cell.",
    ).tag(config=True)
    turn_timeout = Float(1800.0, help="Default seconds a %%pi cell may run.").tag(config=True)
    idle_timeout = Float(
        120.0, help="Seconds the sandbox outlives its last attached notebook or shell (0 = forever)."
    ).tag(config=True)
    workspace_write_limit = Unicode(
        "2g", help="Most the workspace may grow while a sandbox runs, and its largest file (0 = no bound)."
    ).tag(config=True)
    warm_start = Bool(
        True, help="Start the sandbox and pi in the background when a kernel loads the extension (image present)."
    ).tag(config=True)

    @property
    def env_errors(self) -> dict[str, ConfigError]:
        """Bad values `load_settings(defer_errors=True)` could not apply, by key; a key leaves once
        its setting is set again (`%config`, a widget). Starting a sandbox refuses while any is left."""
        return self.__dict__.setdefault("_env_errors", {})

    def _load_config(self, cfg, section_names=None, traits=None) -> None:
        # `%config PimagicSettings.memory = '4g'` sets a key even when the value equals the current
        # one (no change event fires then): the user chose it, so its `.env` error is answered.
        super()._load_config(cfg, section_names=section_names, traits=traits)
        section = cfg[type(self).__name__] if type(self).__name__ in cfg else {}
        for key, trait in _ENV_KEYS.items():
            if trait in section:
                self.env_errors.pop(key, None)
        if "workspace" in section:  # the user named the folder (again): pin what it is now
            self.__dict__.pop("_workspace_pin", None)

    def raise_env_errors(self) -> None:
        """The start path's gate: a sandbox is never started with a default in place of a value
        the user set and mistyped (a `PARANOID_MODE=ture` must not start it unguarded)."""
        errors = list(self.env_errors.values())
        if errors:
            raise InvalidSettingsError(errors)

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
        if proposal.value:
            try:
                parse_model(proposal.value)
            except ValueError:
                raise ConfigError("PIMAGIC_MODEL", proposal.value, "expected provider/model-id") from None
        return proposal.value

    @validate("paranoid")
    def _check_paranoid(self, proposal):
        # Once tracked (pimagic.policy), a plain "off" cannot undo the folder's choice or a pin.
        from . import policy

        return policy.validate(self, bool(proposal.value))

    @validate("thinking")
    def _check_thinking(self, proposal):
        if proposal.value:
            try:
                check_thinking(proposal.value)
            except ValueError as e:
                raise ConfigError("PIMAGIC_THINKING", proposal.value, str(e)) from None
        return proposal.value

    # --- derived values -------------------------------------------------

    @property
    def workspace_path(self) -> Path:
        """The folder's real path as pinned when the user chose it (never resolved again: a link
        a sandbox put on the way since is not followed; `Sandbox.start` checks the pin)."""
        return self.workspace_pin.path

    @property
    def workspace_pin(self) -> workspace_pin.WorkspacePin:
        """The folder pinned at load or when `workspace` was set (pimagic.workspace_pin); a new
        value of the setting, or `%config` naming it, pins again."""
        pinned = self.__dict__.get("_workspace_pin")
        if pinned is None or pinned.source != self.workspace:
            pinned = self.__dict__["_workspace_pin"] = workspace_pin.pin(self.workspace)
        return pinned

    def check_workspace_pin(self) -> workspace_pin.WorkspacePin:
        """The pin, checked against the folder now (WorkspaceReplacedError when it was replaced);
        a pin made before the folder existed takes the directory found then."""
        checked = workspace_pin.check(self.workspace_pin)
        self.__dict__["_workspace_pin"] = checked
        return checked

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
    def model_ref(self) -> ModelRef | None:
        """`model` as provider and id (the setting was validated), or None for pi's default."""
        return parse_model(self.model) if self.model else None

    @property
    def write_limit_bytes(self) -> int:
        """`workspace_write_limit` in bytes; 0 = no bound."""
        return parse_size(self.workspace_write_limit)

    def __repr__(self) -> str:  # never print the token
        token = "<set>" if self.github_token else "<unset>"
        return f"PimagicSettings(workspace={self.workspace!r}, image={self.image!r}, token={token})"


@dataclass(frozen=True)
class ModelRef:
    """``provider/id``; the id may itself contain ``/`` (``openrouter/qwen/qwen3-coder``)."""

    provider: str
    id: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.id}"


def parse_model(spec: str) -> ModelRef:
    """``"provider/id"`` -> :class:`ModelRef`; ValueError on a bad shape. The one parser of a
    model spec (settings, magics, the panel)."""
    provider, sep, model_id = spec.partition("/")
    if (
        not sep
        or not _PROVIDER_RE.match(provider)
        or not model_id
        or model_id.startswith("/")
        or model_id.endswith("/")
        or "//" in model_id
        or not model_id.isprintable()
        or any(c.isspace() for c in model_id)
    ):
        raise ValueError(f"invalid model {spec!r}: expected PROVIDER/ID, e.g. anthropic/claude-sonnet-4-5")
    return ModelRef(provider, model_id)


def check_thinking(level: str) -> str:
    """`level` if pi knows it; ValueError naming the closest level and all of them otherwise."""
    if level not in THINKING_LEVELS:
        close = difflib.get_close_matches(level, THINKING_LEVELS, n=1, cutoff=0.6)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"invalid thinking level {level!r}{guess}; choose from {', '.join(THINKING_LEVELS)}")
    return level


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


def apply_env(
    settings: PimagicSettings, values: Mapping[str, str], source: str,
    errors: dict[str, ConfigError] | None = None,
) -> None:
    """Set traits from KEY=value pairs; a bad value names its key and its source. Every key is
    tried: the bad ones are collected in `errors` (a good value of a key drops its earlier error),
    or, without `errors`, raised together (one ConfigError, or InvalidSettingsError for several)."""
    found: dict[str, ConfigError] = {} if errors is None else errors
    bad: list[ConfigError] = []
    for key, trait in _ENV_KEYS.items():
        if key not in values:
            continue
        hint = f"fix {key} in {source}"
        try:
            setattr(settings, trait, _coerce(settings, key, trait, values[key]))
        except ConfigError as e:
            e.hint = e.hint or hint
            e.args = (str(e),)
            bad.append(e)
        except Exception as e:  # traitlets TraitError and friends
            bad.append(ConfigError(key, values[key], str(e), hint=hint))
        else:
            found.pop(key, None)
            continue
        found[key] = bad[-1]
    if errors is None and bad:
        raise bad[0] if len(bad) == 1 else InvalidSettingsError(bad)


class InvalidSettingsError(ConfigError):
    """Several settings are invalid: every one is named at once, each with what to do."""

    def __init__(self, errors: list[ConfigError]) -> None:
        PimagicError.__init__(
            self,
            f"{len(errors)} invalid setting{'s' if len(errors) != 1 else ''}:\n"
            + "\n".join(f"  {e.message} ({e.hint})" if e.hint else f"  {e.message}" for e in errors),
            hint="fix them where they are set; in a notebook, then `%reload_ext pimagic`, or set one for "
            "this kernel with `%config PimagicSettings.NAME = VALUE`; until then no sandbox starts",
        )
        self.errors = errors
        self.key = ", ".join(e.key for e in errors)
        self.value = None


def _forget_error_when_set(settings: PimagicSettings, key: str) -> None:
    """`%config` or a widget set the trait of a bad key: the user's value replaces the bad one."""
    trait = _ENV_KEYS.get(key)
    if trait is None:  # a line of the file that did not parse: only fixing the file helps
        return

    def forget(change: dict) -> None:
        settings.env_errors.pop(key, None)
        settings.unobserve(forget, names=[trait])

    settings.observe(forget, names=[trait])


def load_settings(
    workspace: str | os.PathLike | None = None,
    *,
    env_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    parent: object | None = None,
    defer_errors: bool = False,
    **overrides: object,
) -> PimagicSettings:
    """Settings for a workspace: defaults < `.env` < environment < overrides; paranoid mode is
    that OR the folder's recorded choice (pimagic.policy, host-only), either saying on wins.

    A bad value (or an unparsable `.env` line) raises, naming every bad key at once; with
    `defer_errors` (the notebook extension, which must load) they are kept in
    `settings.env_errors`, the good keys apply, and no sandbox starts until they are fixed.

    The `.env` values are read, not exported: the token never enters this
    process's environment, so child processes cannot inherit it. A `.env` inside the
    workspace is loaded only when the host can vouch for it (pimagic.envtrust); what was
    refused or ignored is in `settings.env_notes`, for the next cell to show.
    """
    settings = PimagicSettings(parent=parent)
    if workspace is not None:
        settings.workspace = str(Path(workspace).expanduser().resolve())
    settings.workspace_pin  # noqa: B018 - pinned now, as the kernel loads: later starts check it
    environ = environ if environ is not None else os.environ
    errors: dict[str, ConfigError] = {}
    by_trait = {trait: key for key, trait in _ENV_KEYS.items()}

    def apply_trusted() -> None:
        apply_env(settings, environ, "the environment", errors)
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
                errors.pop(by_trait.get(name, ""), None)

    apply_trusted()  # first: the trust records' location may not depend on the file being judged
    try:
        values, notes, source = _env_file_values(settings, env_file)
    except ConfigError as e:  # the file does not parse: none of its keys apply
        if not defer_errors:
            raise
        values, notes, source = {}, [], ""
        errors[e.key] = e
    if values:
        apply_env(settings, values, source, errors)
        apply_trusted()  # the environment and explicit overrides still win
    settings.env_notes = tuple(notes)
    if errors and not defer_errors:
        found = list(errors.values())
        raise found[0] if len(found) == 1 else InvalidSettingsError(found)
    settings.env_errors.update(errors)
    from . import policy  # paranoid mode: this kernel's own value OR the folder's recorded choice

    policy.track(settings, _paranoid_source(environ, values, source, overrides))
    for key in errors:  # from now on, only the user's own setting answers a bad key
        _forget_error_when_set(settings, key)
    return settings


def _says_on(values: Mapping[str, str]) -> bool:
    try:
        return "PARANOID_MODE" in values and _parse_bool("PARANOID_MODE", values["PARANOID_MODE"])
    except ConfigError:
        return False


def _paranoid_source(
    environ: Mapping[str, str], values: Mapping[str, str], source: str, overrides: Mapping[str, object]
) -> str:
    """The source outside the notebook that set paranoid mode on, if one won (overrides, then the
    environment, then the settings file): it pins it on. The IPython configuration is the kernel's
    own `%config` (a `%config` in the kernel lands there too): a deliberate "off" overrides it."""
    if overrides.get("paranoid") is not None:
        return "the settings pimagic was started with" if overrides["paranoid"] else ""
    if "PARANOID_MODE" in environ:
        return "PARANOID_MODE in the environment" if _says_on(environ) else ""
    if "PARANOID_MODE" in values:
        return f"PARANOID_MODE in {source}" if _says_on(values) else ""
    return ""


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
    from . import policy

    environ = environ if environ is not None else os.environ
    with policy.reloading(settings):  # the kernel's own sources, read again: either way
        apply_env(settings, loaded, str(path))
        apply_env(settings, environ, "the environment")
    if "PARANOID_MODE" in environ or "PARANOID_MODE" in loaded:
        policy.reload(settings, _paranoid_source(environ, loaded, str(path), {}))
    policy.sync(settings)  # the folder's choice still applies on top
    settings.env_notes = ()
    return path, digest, sorted(loaded), [envtrust.host_only_note(path, host_only)] if host_only else []
