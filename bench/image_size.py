"""Benchmark 5: size of the sandbox image vs a seed-style image from the same base.

The seed installed a general-purpose toolbox into its image: git, curl, wget, ca-certificates,
procps, build-essential, python3, python3-dev, gh and pi (npm global). That image is rebuilt here
from the same base image as the sandbox, with the same pi version (``ARG PI_VERSION`` of
container/Dockerfile) and the same CA mechanism as pimagic's build (the host's CA bundle goes into
the build context and through container/install-ca.sh into the system trust store, which
NODE_EXTRA_CA_CERTS points at). It is kept minimal on purpose (``--no-install-recommends``, apt
lists and npm cache removed, no install scripts), so the comparison favours the seed.

Both images are built the same way: ``docker build`` through the Docker API (the classic builder
pimagic's own build uses), from the same base image, without BuildKit and without a pull. The
sandbox image names its base in the ``org.pimagic.base-image`` label; the seed-style image is built
on that one. Target (issue 10): the sandbox image at most 0.60x the seed-style image.

The image is built once and cached under ``pimagic-bench/seed-style:<hash of its inputs>``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from .common import Context, Metric, log

NAME = "image_size"
SEED_REPO = "pimagic-bench/seed-style"
SEED_PACKAGES = "git curl wget ca-certificates procps build-essential python3 python3-dev gh"
FALLBACK_BASE = "pimagic-base:node22-bookworm"
BASE_LABEL = "org.pimagic.base-image"  # set by container/Dockerfile: the BASE_IMAGE it was built on
TARGET_RATIO = 0.60

SEED_DOCKERFILE = f"""\
# Seed-style pi image (pimagic benchmark baseline): the seed's package set on the same base.
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
ARG PI_VERSION
ENV DEBIAN_FRONTEND=noninteractive \\
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \\
    NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false
COPY ca-certificates/ /tmp/extra-ca/
COPY install-ca.sh /usr/local/sbin/pimagic-install-ca
RUN apt-get update \\
 && apt-get install -y --no-install-recommends {SEED_PACKAGES} \\
 && sh /usr/local/sbin/pimagic-install-ca /tmp/extra-ca \\
 && rm -rf /tmp/extra-ca /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
RUN npm install -g --ignore-scripts "@earendil-works/pi-coding-agent@${{PI_VERSION}}" \\
 && npm cache clean --force && rm -rf /root/.npm \\
 && pi --version
CMD ["sleep", "infinity"]
"""


def ca_bundle() -> Path | None:
    """PIMAGIC_EXTRA_CA_CERTS (first entry), else the system bundle when present."""
    from pimagic.config import load_settings

    certs = list(load_settings(environ=os.environ).extra_ca_certs)
    if certs:
        return Path(certs[0]).expanduser()
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def _layers(client: Any, ref: str) -> list[str] | None:
    import docker.errors

    try:
        return list(client.images.get(ref).attrs["RootFS"]["Layers"])
    except docker.errors.ImageNotFound:
        return None


def base_image(client: Any, sandbox_image: str) -> tuple[str, str]:
    """The base to build on and why: the one the sandbox image names in its label (the same base
    by construction), else PIMAGIC_BASE_IMAGE, else the local candidate whose layers the sandbox
    image starts with (images from before the label), else the default (pulled if missing)."""
    import docker.errors

    from pimagic.config import load_settings

    try:
        labelled = (client.images.get(sandbox_image).labels or {}).get(BASE_LABEL)
    except docker.errors.ImageNotFound:
        labelled = None
    if labelled:
        return labelled, f"the {BASE_LABEL} label of {sandbox_image}"
    explicit = os.environ.get("PIMAGIC_BASE_IMAGE")
    if explicit:
        return explicit, "PIMAGIC_BASE_IMAGE"
    default = load_settings(environ={}).base_image
    sandbox_layers = _layers(client, sandbox_image) or []
    for candidate in (default, FALLBACK_BASE):
        layers = _layers(client, candidate)
        if layers and sandbox_layers[: len(layers)] == layers:
            return candidate, f"the base of {sandbox_image}"
    for candidate in (default, FALLBACK_BASE):
        if _layers(client, candidate) is not None:
            return candidate, "found locally"
    return default, "default"


def _context(pi_version: str, ca: Path | None) -> tuple[io.BytesIO, str]:
    from pimagic.image import container_dir

    files: list[tuple[str, bytes]] = [
        ("Dockerfile", SEED_DOCKERFILE.encode()),
        ("install-ca.sh", (container_dir() / "install-ca.sh").read_bytes()),
        ("ca-certificates/.keep", b""),
    ]
    if ca is not None:
        files.append(("ca-certificates/extra-0.crt", ca.read_bytes()))
    digest = hashlib.sha256(pi_version.encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf, digest.hexdigest()


def seed_image(ctx: Context, *, build: bool) -> tuple[str | None, dict[str, Any]]:
    """The cached seed-style image tag (building it when allowed), and how it was made."""
    from pimagic.image import image_exists, pi_version

    client = ctx.client
    base, why = base_image(client, ctx.image)
    if _layers(client, base) is None:
        log(f"pulling base image {base}")
        client.images.pull(base)
    base_id = client.images.get(base).id
    version = pi_version()
    ca = ca_bundle()
    context, inputs = _context(version, ca)
    tag = f"{SEED_REPO}:{hashlib.sha256(f'{inputs}{base_id}'.encode()).hexdigest()[:12]}"
    info = {"tag": tag, "base_image": base, "base_reason": why, "pi_version": version,
            "ca_bundle": str(ca) if ca else None, "packages": SEED_PACKAGES.split(), "cached": True}
    if image_exists(client, tag):
        return tag, info
    info["cached"] = False
    if not build:
        return None, info
    log(f"building {tag} from {base} (once; cached by tag afterwards)")
    log_lines: list[str] = []
    for chunk in client.api.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False, decode=True,
        buildargs={"BASE_IMAGE": base, "PI_VERSION": version},
        labels={"org.pimagic.bench": "seed-style"},
    ):
        if "error" in chunk:
            tail = "".join(log_lines[-30:])
            raise RuntimeError(f"seed-style image build failed: {chunk['error'].strip()}\n{tail}")
        line = chunk.get("stream") or ""
        if line:
            log_lines.append(line)
            if line.startswith("Step "):
                log(f"  {line.strip()}")
    return tag, info


def run(ctx: Context) -> list[Metric]:
    client = ctx.client
    sandbox = ctx.image
    tag, info = seed_image(ctx, build=ctx.sizes.build_seed)
    sandbox_size = client.images.get(sandbox).attrs["Size"]
    base_size = client.images.get(info["base_image"]).attrs["Size"]
    details = {**info, "sandbox_image": sandbox, "sandbox_bytes": sandbox_size, "base_bytes": base_size}
    if tag is None:
        return [Metric(NAME, "image size vs seed-style", sandbox_size / 1e6, None, "MB",
                       "seed-style image", note="seed-style image not cached: not built in --quick "
                       "(run once without --quick, or pass --build-seed)", details=details, skipped=True)]
    seed_size = client.images.get(tag).attrs["Size"]
    details["seed_bytes"] = seed_size
    ratio = sandbox_size / seed_size
    return [
        Metric(NAME, "image size", sandbox_size / 1e6, seed_size / 1e6, "MB", "seed-style image",
               ratio=ratio, target=f"<= {TARGET_RATIO:.2f}x", passed=ratio <= TARGET_RATIO,
               note=f"same base {info['base_image']} ({base_size / 1e6:.0f} MB), same builder; "
                    f"over the base: pimagic {(sandbox_size - base_size) / 1e6:+.0f} MB, "
                    f"seed {(seed_size - base_size) / 1e6:+.0f} MB",
               details=details),
    ]
