"""The sandbox image: build context, tag and build. Never starts containers."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import PimagicSettings
from .errors import ImageBuildError, ImageNotFoundError

IMAGE_REPO = "pimagic-sandbox"
LABEL_PI_VERSION = "org.pimagic.pi-version"
LABEL_CONTEXT = "org.pimagic.context-hash"
_CA_DIR = "ca-certificates"

Progress = Callable[[str], None]


def container_dir() -> Path:
    """The `container/` build context: shipped inside the package, or the repo's."""
    for candidate in (Path(__file__).parent / "container", Path(__file__).parent.parent / "container"):
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ImageBuildError("the container/ build context is missing from this installation")


def pi_version() -> str:
    """pi's pinned version: the one place it is written is the Dockerfile's ARG."""
    text = (container_dir() / "Dockerfile").read_text()
    match = re.search(r"^ARG PI_VERSION=(\S+)$", text, re.MULTILINE)
    if not match:
        raise ImageBuildError("container/Dockerfile has no `ARG PI_VERSION=...` line")
    return match.group(1)


def _context_files(settings: PimagicSettings) -> Iterator[tuple[str, bytes, int]]:
    root = container_dir()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in ("base", _CA_DIR) and "__pycache__" not in rel.parts:
            yield str(rel), path.read_bytes(), path.stat().st_mode & 0o777
    yield f"{_CA_DIR}/.keep", b"", 0o644
    for i, cert in enumerate(settings.extra_ca_certs):
        cert_path = Path(cert).expanduser()
        try:
            data = cert_path.read_bytes()
        except OSError as e:
            raise ImageBuildError(
                f"cannot read extra CA certificate {cert_path}: {e.strerror}",
                hint="fix PIMAGIC_EXTRA_CA_CERTS / --ca-cert (PEM files)",
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise ImageBuildError(f"{cert_path} holds no PEM certificate", hint="pass PEM (.crt/.pem) files")
        yield f"{_CA_DIR}/extra-{i}.crt", data, 0o644


def build_args(settings: PimagicSettings) -> dict[str, str]:
    return {"BASE_IMAGE": settings.base_image, "TOOLCHAIN": "1" if settings.toolchain else "0"}


def context_hash(settings: PimagicSettings) -> str:
    """Hash of every input of the build: a change in any of them means a new tag."""
    digest = hashlib.sha256()
    for name, data, mode in _context_files(settings):
        digest.update(f"{name}\0{mode}\0{len(data)}\0".encode())
        digest.update(data)
    for key, value in sorted(build_args(settings).items()):
        digest.update(f"{key}={value}\0".encode())
    return digest.hexdigest()[:12]


def image_tag(settings: PimagicSettings) -> str:
    """The tag to run: the user's, or one derived from pi's version and the context hash."""
    return settings.image or f"{IMAGE_REPO}:pi{pi_version()}-{context_hash(settings)}"


def build_context(settings: PimagicSettings) -> io.BytesIO:
    """A tar of container/ plus the extra CA certificates, for `docker build`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in _context_files(settings):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_image(
    client, settings: PimagicSettings, *, progress: Progress | None = None, nocache: bool = False
) -> str:
    """Build the image, streaming each output line to `progress`; returns the tag."""
    tag = image_tag(settings)
    log: list[str] = []
    stream = client.api.build(
        fileobj=build_context(settings),
        custom_context=True,
        tag=tag,
        buildargs=build_args(settings),
        labels={LABEL_CONTEXT: context_hash(settings)},
        rm=True,
        forcerm=True,
        nocache=nocache,
        pull=False,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            log.append(chunk["error"])
            tail = "".join(log[-40:])
            raise ImageBuildError(chunk["error"].strip(), tail, hint=_build_hint(tail, settings))
        line = chunk.get("stream") or chunk.get("status") or ""
        if line:
            log.append(line)
            if progress:
                progress(line.rstrip("\n"))
    if not image_exists(client, tag):
        raise ImageBuildError("docker reported success but the image is missing", "".join(log[-40:]))
    return tag


def _build_hint(log: str, settings: PimagicSettings) -> str | None:
    if "SELF_SIGNED_CERT_IN_CHAIN" in log or "certificate" in log.lower():
        return (
            "a TLS-intercepting proxy is in the way: pass its CA with "
            "`pimagic build --ca-cert /path/ca.pem` or PIMAGIC_EXTRA_CA_CERTS"
        )
    if "pull access denied" in log or "not found" in log and settings.base_image in log:
        return (
            f"the base image {settings.base_image} cannot be pulled; build a local one with "
            "container/base/build-offline-base.sh and set PIMAGIC_BASE_IMAGE"
        )
    return None


def ensure_image(
    client, settings: PimagicSettings, *, build: bool = True, progress: Progress | None = None
) -> str:
    """Return the image tag, building it first when missing (and allowed)."""
    tag = image_tag(settings)
    if image_exists(client, tag):
        return tag
    if not build or settings.image:
        raise ImageNotFoundError(
            f"sandbox image {tag} is missing",
            hint="run `pimagic build` (or unset PIMAGIC_IMAGE to let pimagic build its own)",
        )
    return build_image(client, settings, progress=progress)
