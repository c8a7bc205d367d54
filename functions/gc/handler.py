"""Lambda: the `gc` maintenance workflow's steps (see tessera.maintenance.workflows).

Step Functions invokes it with `{"step": "<step>", "input": {"as_of"?: ISO-8601}}`; the
result dict says `more: true` while the step has work left.
"""

from tessera.maintenance.lambdas import make_handler

handler = make_handler("gc")
