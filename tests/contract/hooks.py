"""Schemathesis hooks for the tiercache contract run (tests/it/contract.rs).

OpenAPI matches a concrete path before a templated one, so `/api/cache/metrics` is the JSON
metrics route, never the key "metrics" of `/api/cache/{key}` (SPEC §3: the fixed routes win
for every method; §21: on the percent-decoded path, so `batch%2Fget` is `batch/get` too).
Schemathesis does not apply that rule when it generates values for `{key}` (the Key parameter
states the rule in prose only, since generated clients cannot take `allOf` with `not` on a
path parameter), so a case whose key names a fixed route is dropped here: that URL belongs to
another operation, which is tested as itself. Nothing else is filtered, and no check is
relaxed. The names are `engine::key::RESERVED_KEYS`.
"""

import schemathesis

FIXED_ROUTE_NAMES = {"invalidate", "batch/get", "batch/set", "prefetch", "evict", "warm", "snapshot", "metrics"}


@schemathesis.hook
def filter_case(context, case):
    key = (case.path_parameters or {}).get("key")
    return not (isinstance(key, str) and key in FIXED_ROUTE_NAMES)
