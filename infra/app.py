"""The CDK app (`cdk.json`: `python -m infra.app`).

    cdk deploy --all                     # dev
    cdk deploy --all -c stage=prod       # prod
    cdk synth -c bundle=false            # no pip download (the tests synth this way)

cdk-nag's AwsSolutions pack runs on every synth: an unacknowledged finding fails it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import App, Environment, Tags, Validations
from cdk_nag import AwsSolutionsChecks

from infra.config import StageConfig
from infra.stacks import AppStack, DataStack

# CDK feature flags this app relies on (set here, not in cdk.json, so tests get them too).
FEATURE_FLAGS: dict[str, Any] = {
    # Access logs delivered via a bucket policy (works with BUCKET_OWNER_ENFORCED), not ACLs.
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    # A function's version hash includes its layers: the code is in the layer, and without
    # this a deploy that changes only the layer publishes no new version, so prod's `live`
    # alias (the API's) kept running the old code while every other function ran the new.
    "@aws-cdk/aws-lambda:recognizeLayerVersion": True,
}


def build_app(context: Mapping[str, Any] | None = None, *, outdir: str | None = None) -> App:
    """The whole deployment for the stage named in the context (default: dev)."""
    app = App(context={**FEATURE_FLAGS, **(context or {})}, outdir=outdir)
    config = StageConfig.from_context(app.node)
    # Account and region come from the CLI's credentials at deploy time; synth needs neither.
    env = Environment(
        account=app.node.try_get_context("account"), region=app.node.try_get_context("region")
    )
    data = DataStack(
        app, f"Tessera-{config.stage}-Data", config=config, env=env,
        description=f"Tessera {config.stage}: network, keys, database, blocks bucket, changes",
        termination_protection=config.is_prod,
    )  # fmt: skip
    AppStack(
        app, f"Tessera-{config.stage}-App", config=config, data=data, env=env,
        description=f"Tessera {config.stage}: functions, API, identity, events, workflows",
    )  # fmt: skip
    # DBProxyTargetGroup takes no tags (CloudFormation validation F3002 otherwise).
    untaggable = ["AWS::RDS::DBProxyTargetGroup"]
    Tags.of(app).add("app", "tessera", exclude_resource_types=untaggable)
    Tags.of(app).add("stage", config.stage, exclude_resource_types=untaggable)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def main() -> None:
    """Synthesise the app into `cdk.out` (what `cdk synth/deploy` runs)."""
    build_app().synth()


if __name__ == "__main__":
    main()
