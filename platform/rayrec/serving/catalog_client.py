"""`rayrec catalog add|hide`: the admin routes of a running endpoint from the command line.

Reads a JSON-lines file of items (one object per line: ``item_id``, ``title``, optional
``genres`` and ``text``, as ``POST /items`` takes them), checks every line before anything is
sent (a bad line is an error naming its line number), then posts them in batches and reports
each row as added or rejected (with the line it came from). Standard library only: no client
dependency beyond Python.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rayrec.errors import DataError, UserFacingError
from rayrec.serving.api import load_api_keys

ITEM_FIELDS = {"item_id": (str, int), "title": (str,), "genres": (list,), "text": (str, type(None))}
REQUIRED = ("item_id", "title")


def _check_line(obj: Any) -> str | None:
    """What is wrong with one parsed line (the server checks the content again)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    unknown = sorted(set(obj) - set(ITEM_FIELDS))
    if unknown:
        return f"unknown field(s) {unknown} (expected {sorted(ITEM_FIELDS)})"
    for name in REQUIRED:
        if name not in obj:
            return f"{name}: missing"
    for name, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, ITEM_FIELDS[name]):
            return f"{name}: must be {' or '.join(t.__name__ for t in ITEM_FIELDS[name])}"
    if any(not isinstance(g, str) for g in obj.get("genres", [])):
        return "genres: must be a list of strings"
    return None


def read_items_file(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, item) of every non-blank line; DataError naming the first bad line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not valid JSON ({e.msg}); nothing was sent") from None
        problem = _check_line(obj)
        if problem:
            raise DataError(f"{path} line {n}: {problem}; nothing was sent")
        out.append((n, obj))
    if not out:
        raise DataError(f"{path}: no items (one JSON object per line); nothing was sent")
    return out


def _batches(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def post_json(url: str, key: str, body: dict[str, Any], timeout_s: float) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a POST with the admin key; UserFacingError when nothing answers."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except json.JSONDecodeError:
            return e.code, {"error": e.reason, "detail": payload.decode(errors="replace")[:500]}
    except (urllib.error.URLError, OSError) as e:
        raise UserFacingError(f"no endpoint answers at {url} ({getattr(e, 'reason', e)}); is `rayrec serve` "
                              "running, and is --url right?") from None


def _refused(status: int, body: dict[str, Any]) -> UserFacingError:
    return UserFacingError(f"the endpoint refused the request ({status} {body.get('error', '')}): "
                           f"{body.get('detail', body)}")


def add_items(url: str, key: str, rows: list[tuple[int, dict[str, Any]]], batch_size: int,
              timeout_s: float) -> dict[str, Any]:
    """Post ``rows`` in batches; ``{"added": [...], "rejected": [...]}`` with each rejected row's
    file line. Stops at the first batch the endpoint refuses as a whole (auth, size, outage)."""
    added, rejected, notes = [], [], set()
    for batch in _batches(rows, batch_size):
        status, body = post_json(f"{url.rstrip('/')}/items", key, {"items": [obj for _, obj in batch]}, timeout_s)
        if status not in (200, 422) or "rejected" not in body:
            raise _refused(status, body)
        added += body["added"]
        rejected += [r | {"line": batch[r["index"]][0]} for r in body["rejected"]]
        if body.get("note"):
            notes.add(body["note"])
    return {"added": added, "rejected": rejected, "notes": sorted(notes)}


def hide_items(url: str, key: str, item_ids: list[str], timeout_s: float) -> dict[str, Any]:
    status, body = post_json(f"{url.rstrip('/')}/items/hide", key, {"item_ids": item_ids}, timeout_s)
    if status not in (200, 422) or "rejected" not in body:
        raise _refused(status, body)
    return {"hidden": body["hidden"], "rejected": body["rejected"]}


def admin_key(env_var: str, key_file: str | None) -> str:
    """The first admin key in ``$env_var`` (comma separated) or the key file."""
    try:
        keys = load_api_keys(env_var, key_file)
    except OSError as e:
        raise UserFacingError(f"cannot read serve.admin_api_keys_file: {e}") from None
    if not keys:
        raise UserFacingError(f"no admin key: set ${env_var} (or serve.admin_api_keys_file) to a key the "
                              "endpoint was started with")
    return keys[0]


def print_result(result: dict[str, Any]) -> None:
    """Added ids on one line, then one line per rejected row with its reason."""
    done = result.get("added", result.get("hidden", []))
    verb = "added" if "added" in result else "hidden"
    print(f"{verb} {len(done)}: {', '.join(done)}" if done else f"{verb} 0")
    for r in result["rejected"]:
        where = f"line {r['line']}" if "line" in r else f"#{r['index']}"
        print(f"rejected ({where}) {r['item_id']}: {r['reason']}")
    for note in result.get("notes", []):
        print(f"note: {note}")
