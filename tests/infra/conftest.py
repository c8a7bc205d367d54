"""One synth of the whole CDK app per session (dev and prod), shared by every infra test.

The app is built in-process with `bundle=false` (the layer holds the `tessera` sources, pip
is not run) against the real `functions/` folder; a missing function folder fails the session
naming it. Node.js is required by the CDK (jsii): without it the tests fail, saying so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_DEPRECATED", "quiet")

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = (
    "api", "longpoll", "outbox_relay", "change_router",
    "dedup_verify", "gc", "cold_storage", "scrub", "migrate", "auth",
)  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--functions-root",
        default=str(REPO_ROOT / "functions"),
        help="folder holding functions/<name>/handler.py for the infra synth",
    )


@dataclass
class Synth:
    """The synthesised app of one stage."""

    app: Any
    data: Any  # DataStack
    app_stack: Any  # AppStack
    outdir: Path
    data_template: Any  # aws_cdk.assertions.Template
    app_template: Any

    def templates(self) -> dict[str, dict[str, Any]]:
        """Stack name → CloudFormation template (JSON)."""
        return {
            self.data.stack_name: self.data_template.to_json(),
            self.app_stack.stack_name: self.app_template.to_json(),
        }


def _synth(stage: str, request: pytest.FixtureRequest, tmp: pytest.TempPathFactory) -> Synth:
    """Synthesise `stage` with the handlers under --functions-root (default: functions/)."""
    functions_root = Path(
        request.config.getoption("--functions-root", str(REPO_ROOT / "functions"))
    )
    outdir = tmp.mktemp(f"cdk-{stage}")
    if shutil.which("node") is None:
        pytest.fail(
            "Node.js is required for the CDK checks (tests/infra): install Node.js >= 18",
            pytrace=False,
        )
    missing = [n for n in FUNCTIONS if not (functions_root / n / "handler.py").is_file()]
    if missing:
        pytest.fail(
            "the CDK app deploys these functions, but their handler.py is missing under "
            f"{functions_root}: {', '.join(missing)}",
            pytrace=False,
        )
    from aws_cdk.assertions import Template

    from infra.app import build_app
    from infra.stacks import AppStack, DataStack

    app = build_app(
        {"stage": stage, "bundle": "false", "functions_root": str(functions_root)},
        outdir=str(outdir),
    )
    app.synth()  # runs cdk-nag (Validations plugin): any unacknowledged finding raises here
    data = next(c for c in app.node.children if isinstance(c, DataStack))
    app_stack = next(c for c in app.node.children if isinstance(c, AppStack))
    return Synth(
        app=app,
        data=data,
        app_stack=app_stack,
        outdir=outdir,
        data_template=Template.from_stack(data),
        app_template=Template.from_stack(app_stack),
    )


@pytest.fixture(scope="session")
def dev(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synth]:
    """The dev stage, synthesised once."""
    yield _synth("dev", request, tmp_path_factory)


@pytest.fixture(scope="session")
def prod(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synth]:
    """The prod stage, synthesised once."""
    yield _synth("prod", request, tmp_path_factory)
