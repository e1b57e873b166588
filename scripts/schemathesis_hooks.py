"""schemathesis hooks for scripts/contract.sh: requests as a real client of
this API would make them, where the schema cannot say it.

- `category_id` must name one of the writer's own categories, which the
  served schema can only say in words: for this run the writer is the
  contract user, whose one category (CONTRACT_CATEGORY, made before the
  run) is the one id it may name, so `CategoryRef` is narrowed to it (or
  `null`) before the schema is loaded, and a number drawn by a phase that
  ignores the schema's values is replaced by it. Other ids still reach the
  server in the negative cases, which must be refused.
- An `Idempotency-Key` stands for one request: a client sends a fresh key
  with each new request, and the same key with another body is refused
  (422) by design. Each generated request gets a key of its own.
"""

import os
import uuid

import schemathesis

CATEGORY = int(os.environ["CONTRACT_CATEGORY"])


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    ref = raw_schema["components"]["schemas"]["CategoryRef"]
    ref["enum"] = [CATEGORY, None]


@schemathesis.hook
def map_body(ctx, body):
    path = ctx.operation.path if ctx.operation is not None else ""
    if path.startswith("/todos") and isinstance(body, dict):
        value = body.get("category_id")
        if isinstance(value, int) and not isinstance(value, bool):
            body["category_id"] = CATEGORY
    return body


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers
