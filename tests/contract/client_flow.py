"""A flow through the Python client that openapi-python-client generates from openapi.yaml
(tests/it/contract.rs generates it, then runs this against a live instance).

Usage: python client_flow.py BASE_URL TOKEN   (the generated package `tiercache_client` on
PYTHONPATH). Every operation is called at least once through the generated functions, with
`raise_on_unexpected_status`, so an answer the document does not describe fails the run; every
answer is checked through the generated models, not raw JSON. Exits non-zero on the first
failed check, naming it.
"""

import sys
from http import HTTPStatus

from tiercache_client import AuthenticatedClient
from tiercache_client.api.bulk import batch_get, batch_set, clear, evict, invalidate
from tiercache_client.api.entries import delete_entry, get_entry, put_entry
from tiercache_client.api.lifecycle import snapshot, start_warm, warm_status
from tiercache_client.api.operations import health, metrics_json, metrics_prometheus, ready
from tiercache_client.api.read_through import list_prefetch, queue_prefetch
from tiercache_client.models import (
    BatchEntry,
    BatchGetBody,
    BatchGetResponse,
    BatchSetBody,
    DeleteResponse,
    EntryResponse,
    Error,
    EvictBody,
    InvalidateRequest,
    Metrics,
    MissResponse,
    PutRequest,
    PutResponse,
    QueuePrefetchBody,
    QueuePrefetchBodyItemsItem,
    SuccessCount,
)
from tiercache_client.types import UNSET

CHECKS = 0


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        sys.exit(f"FAILED: {what}")


def put(client, key, value, **fields):
    answer = put_entry.sync_detailed(key, client=client, body=PutRequest(value=value, **fields))
    check(answer.status_code == HTTPStatus.OK, f"PUT {key}: {answer.status_code} {answer.content!r}")
    check(isinstance(answer.parsed, PutResponse) and answer.parsed.success and answer.parsed.key == key,
          f"PUT {key} parsed: {answer.parsed!r}")
    return answer.parsed


def get(client, key):
    return get_entry.sync_detailed(key, client=client)


def is_hit(answer, key):
    return answer.status_code == HTTPStatus.OK and isinstance(answer.parsed, EntryResponse) and answer.parsed.key == key


def is_miss(answer, key):
    return (answer.status_code == HTTPStatus.NOT_FOUND and isinstance(answer.parsed, MissResponse)
            and answer.parsed.key == key and answer.parsed.hit is False)


def main():
    base, token = sys.argv[1], sys.argv[2]
    client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True, timeout=10.0)

    # Writes with ttl, tags and dependencies; a key with a space and a slash goes through the
    # client's percent-encoding and comes back as itself.
    put(client, "org:7", {"name": "Lovelace Ltd"}, tags=["orgs"])
    stored = put(client, "user:1", {"name": "Ada"}, ttl=600, tags=["users"], depends_on=["org:7"])
    check(stored.l2.value == "stored", f"written through to L2: {stored.l2}")
    put(client, "a b/c", [1, None, "x"])

    answer = get(client, "user:1")
    check(is_hit(answer, "user:1"), f"GET user:1: {answer.status_code} {answer.content!r}")
    entry = answer.parsed
    check(entry.value == {"name": "Ada"} and entry.hit and entry.tags == ["users"], f"entry: {entry!r}")
    check(entry.source.value == "l1" and 0 < entry.ttl_remaining <= 600, f"entry: {entry!r}")
    check(entry.expires_at > entry.cached_at, f"timestamps parsed: {entry!r}")
    check(get(client, "a b/c").parsed.value == [1, None, "x"], "a key with a space and a slash")

    # 304 with the ETag of the answer, 200 with another.
    etag = answer.headers["etag"]
    check(etag.startswith('W/"'), f"a weak ETag: {etag}")
    check(get_entry.sync_detailed("user:1", client=client, if_none_match=etag).status_code == HTTPStatus.NOT_MODIFIED,
          "If-None-Match with the current ETag is 304")
    check(get_entry.sync_detailed("user:1", client=client, if_none_match='"other"').status_code == HTTPStatus.OK,
          "If-None-Match with another ETag is 200")

    # Writing org:7 again cascades to user:1, which depends on it.
    put(client, "org:7", {"name": "Lovelace Ltd", "v": 2}, tags=["orgs"])
    check(is_miss(get(client, "user:1"), "user:1"), "the dependent is invalidated by the write")

    # Invalidation by tag, by pattern and by keys.
    put(client, "user:2", 2, tags=["users"])
    put(client, "user:3", 3, tags=["users"])
    put(client, "item:1", 1)
    put(client, "item:2", 2)
    put(client, "other", 0)
    answer = invalidate.sync_detailed(client=client, body=InvalidateRequest(tags=["users"]))
    check(isinstance(answer.parsed, SuccessCount) and answer.parsed.invalidated == 2, f"by tag: {answer.content!r}")
    answer = invalidate.sync_detailed(client=client, body=InvalidateRequest(pattern="item:*"))
    check(isinstance(answer.parsed, SuccessCount) and answer.parsed.invalidated == 2, f"by pattern: {answer.content!r}")
    answer = invalidate.sync_detailed(client=client, body=InvalidateRequest(keys=["other", "absent"]))
    check(isinstance(answer.parsed, SuccessCount) and answer.parsed.invalidated == 1, f"by keys: {answer.content!r}")
    for key in ["user:2", "user:3", "item:1", "item:2", "other"]:
        check(is_miss(get(client, key), key), f"{key} is gone")
    answer = invalidate.sync_detailed(client=client, body=InvalidateRequest())
    check(answer.status_code == HTTPStatus.BAD_REQUEST and isinstance(answer.parsed, Error)
          and answer.parsed.error.code == "empty_invalidation", f"an empty invalidation: {answer.content!r}")

    # Delete.
    answer = delete_entry.sync_detailed("a b/c", client=client)
    check(isinstance(answer.parsed, DeleteResponse) and answer.parsed.deleted and answer.parsed.invalidated == 1,
          f"DELETE: {answer.content!r}")
    check(is_miss(get(client, "a b/c"), "a b/c"), "deleted")

    # Batches.
    entries = [BatchEntry(key=f"batch:{n}", value={"n": n}, ttl=60, tags=["batch"]) for n in range(3)]
    answer = batch_set.sync_detailed(client=client, body=BatchSetBody(entries=entries))
    check(answer.status_code == HTTPStatus.OK and answer.parsed.stored == 3, f"batch/set: {answer.content!r}")
    answer = batch_get.sync_detailed(client=client, body=BatchGetBody(keys=["batch:0", "batch:2", "nothing"]))
    check(isinstance(answer.parsed, BatchGetResponse), f"batch/get: {answer.content!r}")
    found = answer.parsed.entries.additional_properties
    check(sorted(found) == ["batch:0", "batch:2"] and found["batch:2"].value == {"n": 2}, f"entries: {found!r}")
    check(answer.parsed.missing == ["nothing"], f"missing: {answer.parsed.missing!r}")
    answer = batch_set.sync_detailed(client=client, body=BatchSetBody(entries=[BatchEntry(key="metrics", value=1)]))
    check(answer.status_code == HTTPStatus.BAD_REQUEST and answer.parsed.error.code == "invalid_key",
          f"a fixed route's name is not a key: {answer.content!r}")

    # Evict, prefetch, warm, snapshot: answered as the document says for this bare instance.
    answer = evict.sync_detailed(client=client, body=EvictBody(count=1))
    check(answer.status_code == HTTPStatus.OK and answer.parsed.evicted == 1, f"evict: {answer.content!r}")
    items = [QueuePrefetchBodyItemsItem(key="p:1", priority=0.5)]
    answer = queue_prefetch.sync_detailed(client=client, body=QueuePrefetchBody(items=items))
    check(answer.status_code == HTTPStatus.CONFLICT and answer.parsed.error.code == "origin_not_configured",
          f"prefetch without an origin: {answer.content!r}")
    check(list_prefetch.sync_detailed(client=client).parsed.queue == [], "an empty prefetch queue")
    check(start_warm.sync_detailed(client=client).status_code == HTTPStatus.CONFLICT, "warm without a source")
    check(warm_status.sync_detailed(client=client).parsed.state.value == "idle", "warm status")
    check(snapshot.sync_detailed(client=client).status_code == HTTPStatus.CONFLICT, "snapshot without persistence")

    # Metrics and operations.
    answer = metrics_json.sync_detailed(client=client)
    check(isinstance(answer.parsed, Metrics), f"metrics: {answer.content!r}")
    metrics = answer.parsed
    check(metrics.sets >= 12 and metrics.hits >= 4 and metrics.l2_status.value == "up", f"metrics: {metrics!r}")
    check(metrics.snapshot_last_success is None or metrics.snapshot_last_success is UNSET, "no snapshot yet")
    prometheus = metrics_prometheus.sync_detailed(client=client)
    check(prometheus.status_code == HTTPStatus.OK and b"tiercache_sets_total" in prometheus.content, "Prometheus text")
    check(health.sync_detailed(client=client).parsed.status.value == "ok", "health")
    check(ready.sync_detailed(client=client).parsed.ready is True, "ready")
    answer = clear.sync_detailed(client=client)
    check(answer.status_code == HTTPStatus.OK and answer.parsed.cleared >= 2, f"clear: {answer.content!r}")
    check(is_miss(get(client, "batch:1"), "batch:1"), "cleared")

    print(f"client flow passed: {CHECKS} checks")


if __name__ == "__main__":
    main()
