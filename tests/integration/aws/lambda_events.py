"""Real event shapes for calling the Lambda handlers directly (moto never runs Lambda code):
API Gateway REST proxy events with Cognito authorizer claims, DynamoDB stream records, and a
Lambda context."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Context:
    """The attributes of a Lambda context object Powertools reads."""

    function_name: str = "tessera-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:tessera-test"
    aws_request_id: str = "req-test"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def rest_event(
    path: str, body: Any = None, *, claims: dict[str, str] | None = None, method: str = "POST"
) -> dict[str, Any]:
    """An API Gateway REST proxy event; `claims` as the Cognito authorizer sets them."""
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"content-type": "application/json"},
        "multiValueHeaders": {"content-type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "203.0.113.7"},
            "authorizer": {"claims": claims} if claims is not None else None,
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def stream_record(
    ns_id: int, seq: int, event_id: str, *, name: str = "INSERT", kind: str = "file"
) -> dict[str, Any]:
    """A DynamoDB stream record of the changes table (NEW_IMAGE view)."""
    image = {
        "ns_id": {"N": str(ns_id)},
        "seq": {"N": str(seq)},
        "event_id": {"S": event_id},
        "kind": {"S": kind},
        "payload": {"S": json.dumps({"path": f"/f{seq}"})},
    }
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"ns_id": image["ns_id"], "seq": image["seq"]},
            "SequenceNumber": f"{ns_id}{seq:010d}",
            "SizeBytes": 100,
            "StreamViewType": "NEW_IMAGE",
            **({} if name == "REMOVE" else {"NewImage": image}),
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/tessera-changes/stream/x",
    }
