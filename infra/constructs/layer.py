"""The one Lambda layer: the `tessera` package from `layers/` plus its runtime dependencies.

Built on this machine, without Docker: `pip install --platform manylinux2014_aarch64
--only-binary=:all:` fetches the Lambda platform's wheels, exactly those `infra/layer.lock`
names (version and sha256 of each: `make layer-lock` resolves them again from
pyproject.toml). With `-c bundle=false` (the tests) the layer holds the `tessera` sources
only, so synth never touches the network.

The layer ships bytecode compiled by a Python 3.12 interpreter: Lambda mounts layers
read-only under /opt, so without `.pyc` files every cold start compiles every module it
imports (measured: +1.5 s of CPU for the api function). The `.pyc` files are unchecked-hash
based, so they stay valid whatever mtimes the asset zip gives the sources.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import ILocalBundling, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.config import REPO_ROOT, StageConfig

RUNTIME = lambda_.Runtime.PYTHON_3_12
PYTHON_VERSION = "3.12"  # must match RUNTIME: the wheels are chosen for this interpreter
ARCHITECTURE = lambda_.Architecture.ARM_64
PLATFORM = "manylinux2014_aarch64"
# pip's options that choose the Lambda platform's wheels (binary only: nothing is built here)
_PIP_PLATFORM = [
    "--platform", PLATFORM, "--implementation", "cp",
    "--python-version", PYTHON_VERSION, "--only-binary=:all:",
]  # fmt: skip
# Every wheel the layer is built from, pinned with its hash: what a deploy ships is what
# was locked, not whatever the index served that day (the layer's hash covers this file).
LOCK = REPO_ROOT / "infra" / "layer.lock"
_LOCK_HEADER = """\
# The Lambda layer's wheels (CPython 3.12, manylinux2014_aarch64), each pinned with its
# sha256: the layer is built from exactly these (pip --require-hashes --no-deps).
# Made by `make layer-lock` from pyproject.toml's requirements; do not edit by hand.
"""

# Dependencies of the base install and the `server` extra that the functions never import:
# the embedded PostgreSQL and the local gateway (laptop only), the file watcher (client
# only). boto3 stays in: pynamodb and aws-xray-sdk pull in a current botocore, which would
# otherwise shadow the runtime's and mismatch the runtime's boto3.
_NOT_IN_LAYER = {"pgserver", "uvicorn", "starlette", "watchdog"}


def _name_of(requirement: str) -> str:
    for sep in "[<>=!~ ;":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower()


def layer_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """The pip requirements of the layer, read from pyproject.toml (one home for versions)."""
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    return [req for req in wanted if _name_of(req) not in _NOT_IN_LAYER]


def _canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them (`PyJWT`, `pyjwt`, `py_jwt` alike)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def write_lock(lock: Path = LOCK, requirements: list[str] | None = None) -> None:
    """Resolve `requirements` (the layer's, by default) for the Lambda platform and write
    each wheel of the result, pinned with its sha256, into `lock`. Needs the package index."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
             "--ignore-installed", "--report", str(report), *_PIP_PLATFORM,
             *(layer_requirements() if requirements is None else requirements)],
            check=True,
        )  # fmt: skip
        resolved = json.loads(report.read_text("utf-8"))["install"]
    pins = sorted(
        f"{_canonical(wheel['metadata']['name'])}=={wheel['metadata']['version']}"
        f" --hash=sha256:{wheel['download_info']['archive_info']['hashes']['sha256']}"
        for wheel in resolved
    )
    lock.write_text(_LOCK_HEADER + "\n".join(pins) + "\n", "utf-8")


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """The lock's pins: canonical distribution name → version."""
    pins = {}
    for line in lock.read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[_canonical(name)] = rest.split()[0]
    return pins


def find_interpreter(explicit: str = "") -> str | None:
    """A Python `PYTHON_VERSION` interpreter (`explicit`, else `python3.12` on PATH) that
    runs and reports that version; None when there is none (pyenv shims may not run)."""
    candidate = explicit or shutil.which(f"python{PYTHON_VERSION}")
    if not candidate:
        return None
    try:
        out = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return candidate if out.returncode == 0 and out.stdout.strip() == PYTHON_VERSION else None


def compile_bytecode(target: Path, interpreter: str) -> None:
    """Compile every module under `target` with `interpreter` (unchecked-hash `.pyc`)."""
    # Not check=True: a wheel may ship a file that is not valid Python 3.12 (a template, a
    # test of an old syntax); compileall reports it and compiles everything else.
    subprocess.run(
        [interpreter, "-m", "compileall", "-q", "-j", "0",
         "--invalidation-mode", "unchecked-hash", str(target)],
        check=False,
    )  # fmt: skip


@jsii.implements(ILocalBundling)
class PipLayerBundler:
    """Local bundling: copy `tessera` into `python/`, then (optionally) pip the wheels the
    `lock` names there."""

    def __init__(
        self,
        layers_root: Path,
        lock: Path,
        *,
        install: bool,
        bytecode_python: str = "",
    ) -> None:
        self._layers_root = layers_root
        self._lock = lock
        self._install = install
        self._bytecode_python = bytecode_python

    def inputs(self) -> dict[str, str]:
        """What the built layer depends on besides the `layers/` sources. CDK's asset hash
        covers the sources and the bundling options as JSON, where this bundler (a jsii
        reference) shows none of its fields: a sources-only build (`-c bundle=false`) left
        in `cdk.out` was deployed as the layer, and a dependency bump alone never was."""
        interpreter = find_interpreter(self._bytecode_python) if self._install else None
        return {
            "TESSERA_LAYER_LOCK": hashlib.sha256(self._lock.read_bytes()).hexdigest(),
            "TESSERA_LAYER_INSTALL": "1" if self._install else "0",
            "TESSERA_LAYER_PLATFORM": f"{PLATFORM} cp{PYTHON_VERSION}",
            "TESSERA_LAYER_BYTECODE": "1" if interpreter else "0",
        }

    def try_bundle(self, output_dir: str, options: Any = None, **_: Any) -> bool:
        """Build the layer into `output_dir`; never falls back to Docker."""
        target = Path(output_dir) / "python"
        shutil.copytree(
            self._layers_root / "tessera",
            target / "tessera",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache"),
            dirs_exist_ok=True,
        )
        if not self._install:
            return True
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                *_PIP_PLATFORM, "--no-deps", "--require-hashes",
                "--target", str(target), "--requirement", str(self._lock),
            ],
            check=True,
        )  # fmt: skip
        interpreter = find_interpreter(self._bytecode_python)
        if interpreter is None:
            print(
                f"warning: no Python {PYTHON_VERSION} found (python{PYTHON_VERSION} on PATH or "
                "-c bytecode_python=PATH): the layer has no bytecode, so every cold start "
                "compiles its modules (~1.5 s of CPU)",
                file=sys.stderr,
            )
        else:
            compile_bytecode(target, interpreter)
        return True


class TesseraLayer(Construct):
    """`layer`: the LayerVersion every function uses."""

    def __init__(self, scope: Construct, id: str, *, config: StageConfig) -> None:
        super().__init__(scope, id)
        bundler = PipLayerBundler(
            config.layers_root,
            LOCK,
            install=config.bundle,
            bytecode_python=config.bytecode_python,
        )
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            description="tessera package and its runtime dependencies",
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            removal_policy=RemovalPolicy.RETAIN,  # old versions stay for rollbacks
            code=layer_code(config.layers_root, bundler),
        )


def layer_code(layers_root: Path, bundler: PipLayerBundler) -> lambda_.AssetCode:
    """The layer's asset: `layers_root` built by `bundler`, hashed over both."""
    from aws_cdk import BundlingOptions, DockerImage

    return lambda_.Code.from_asset(
        str(layers_root),
        exclude=["**/__pycache__", "*.egg-info"],
        # `image` is mandatory but never used: local bundling always succeeds or raises, so
        # CDK never falls back to Docker; `environment`, unused by local bundling, is hashed
        bundling=BundlingOptions(
            image=DockerImage.from_registry("unused"),
            local=bundler,
            environment=bundler.inputs(),
        ),
    )


if __name__ == "__main__":  # `make layer-lock`
    write_lock()
    print(f"wrote {LOCK.relative_to(REPO_ROOT)}: {len(locked_versions())} wheels")
