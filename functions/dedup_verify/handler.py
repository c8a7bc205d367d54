"""Lambda: the `dedup` maintenance workflow's steps (see tessera.maintenance.workflows).

Step Functions invokes it with `{"step": "<step>", "input": {"as_of"?: ISO-8601}}`; the
result dict says `more: true` while the step has work left.
The dedup SQS queue (commit events via an EventBridge rule) invokes it with SQS batches.
"""

from tessera.maintenance.lambdas import make_handler

handler = make_handler("dedup")
