"""Schemathesis hooks for the tiercache contract run (tests/it/contract.rs).

OpenAPI matches a concrete path before a templated one, so `/api/cache/metrics` is the JSON
metrics route, never the key "metrics" of `/api/cache/{key}` (SPEC §3: the fixed routes win
for every method). Schemathesis does not apply that rule when it generates values for `{key}`
(its negative cases pick exactly the names the schema excludes), so a case whose key names a
fixed route is dropped here: that URL belongs to another operation, which is tested as itself.
Nothing else is filtered, and no check is relaxed.
"""

import schemathesis

FIXED_ROUTE_NAMES = {"invalidate", "evict", "prefetch", "warm", "snapshot", "metrics"}


@schemathesis.hook
def filter_case(context, case):
    key = (case.path_parameters or {}).get("key")
    return not (isinstance(key, str) and key in FIXED_ROUTE_NAMES)
