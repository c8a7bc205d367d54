"""The one Lambda layer: the `tessera` package from `layers/` plus its runtime dependencies.

Built on this machine, without Docker: `pip install --platform manylinux2014_aarch64
--only-binary=:all:` fetches the Lambda platform's wheels. With `-c bundle=false` (the
tests) the layer holds the `tessera` sources only, so synth never touches the network.

The layer ships bytecode compiled by a Python 3.12 interpreter: Lambda mounts layers
read-only under /opt, so without `.pyc` files every cold start compiles every module it
imports (measured: +1.5 s of CPU for the api function). The `.pyc` files are unchecked-hash
based, so they stay valid whatever mtimes the asset zip gives the sources.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    """Local bundling: copy `tessera` into `python/`, then (optionally) pip the wheels there."""

    def __init__(
        self,
        layers_root: Path,
        requirements: list[str],
        *,
        install: bool,
        bytecode_python: str = "",
    ) -> None:
        self._layers_root = layers_root
        self._requirements = requirements
        self._install = install
        self._bytecode_python = bytecode_python

    def inputs(self) -> dict[str, str]:
        """What the built layer depends on besides the `layers/` sources. CDK's asset hash
        covers the sources and the bundling options as JSON, where this bundler (a jsii
        reference) shows none of its fields: a sources-only build (`-c bundle=false`) left
        in `cdk.out` was deployed as the layer, and a dependency bump alone never was."""
        interpreter = find_interpreter(self._bytecode_python) if self._install else None
        return {
            "TESSERA_LAYER_REQUIREMENTS": " ".join(sorted(self._requirements)),
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
                "--platform", PLATFORM, "--implementation", "cp",
                "--python-version", PYTHON_VERSION, "--only-binary=:all:",
                "--target", str(target), *self._requirements,
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
            layer_requirements(),
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
