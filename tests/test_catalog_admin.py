"""Items added to (and hidden from) a running endpoint: POST /items, /items/hide and `rayrec
catalog`, over real HTTP.

Fast on purpose: no Ray. The endpoint's own classes run in this process: the FastAPI app the
ingress deployment mounts, served by uvicorn on a thread, with the ingress and retrieval
deployment classes instantiated directly (Serve's replica context and deployment handles are
stood in for; the policy picks greedily in-process). The catalog is the tiny one of
``serving_support`` with a text index and a text-grounded retriever whose id vectors are zero,
so an item's retriever vector is its text's alone: an added item with a warm item's text must
score exactly as that item does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from rayrec.runtime import free_port  # noqa: E402
from serving_support import API_KEY, N_ITEMS, write_tiny_dataset  # noqa: E402

ADMIN_KEY = "admin-key-0123456789"
ADMIN_ENV = "RAYREC_TEST_ADMIN_KEYS"
NO_ADMIN_ENV = "RAYREC_TEST_ADMIN_KEYS_UNSET"


# ---- stand-ins for what Serve provides -----------------------------------------------------

class _Call:
    """What ``handle.method.remote(...)`` returns: awaiting it runs the method here."""

    def __init__(self, method, args, kwargs) -> None:
        self.method, self.args, self.kwargs = method, args, kwargs

    def __await__(self):
        async def run():
            out = self.method(*self.args, **self.kwargs)
            return await out if inspect.isawaitable(out) else out
        return run().__await__()


class LocalHandle:
    """A deployment handle whose calls run on an object in this process."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        return SimpleNamespace(remote=lambda *a, **kw: _Call(method, a, kw))


class LocalPolicies:
    """The ingress's policy client, minus the shared state actors: the policy picks here."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    async def select(self, policy, scores, k, features, arms, request_id, diversity="none",
                     diversity_weight=0.0, embeddings=None, new=None, source=None):
        from rayrec.explore.policies import make_policy

        return make_policy(policy, self.cfg.explore, 0).select(scores, k, features, arms, embeddings=embeddings,
                                                               new=new)

    async def stats(self):
        return {}

    def close(self):
        pass


def _ingress(shared: dict, retrieval):
    """The ingress deployment's class (under Serve's wrapper), built in this process."""
    from rayrec.serving.ingress import RecommenderIngress

    cls = RecommenderIngress.func_or_class.__bases__[0]
    ingress = cls(shared, LocalHandle(retrieval), LocalHandle(None))
    ingress.bandit = LocalPolicies(ingress.cfg)
    return ingress


# ---- the endpoint --------------------------------------------------------------------------

def _build_run(root: Path) -> dict:
    """Tiny catalog, text index and a text-grounded retriever (no training: id vectors zero)."""
    import torch
    from rayrec.config import load_config
    from rayrec.data.store import load_items
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.retrieval.encoder import TextEncoder
    from rayrec.retrieval.index import ItemIndex
    from rayrec.seqrec.model import SASRec, save_retriever
    from rayrec.seqrec.scorer import build_retriever_index

    backbone = make_tiny_backbone("bert", root / "tiny_bert")
    overrides = {
        "run_dir": str(root / "run"), "model.backbone": str(backbone), "model.max_length": 64,
        "retriever.text_init": True, "retriever.dim": 16, "retriever.layers": 1, "retriever.max_len": 10,
        "retriever.dropout": 0.0,
        "serve.use_ranker": False, "serve.rank_candidates": 60, "serve.max_k": 60,
        "serve.require_api_key": True, "serve.api_keys_file": str(root / "keys.txt"),
        "serve.admin_api_keys_env": ADMIN_ENV, "serve.catalog_refresh_s": 0.2,
        "serve.event_flush_rows": 1, "serve.event_flush_interval_s": 0.2, "serve.max_text_length": 200,
        "serve.admin_max_rows": 8,
    }
    cfg = load_config(None, overrides)
    (root / "keys.txt").write_text(f"{API_KEY}\n")
    write_tiny_dataset(Path(cfg.data_dir))
    items = load_items(cfg.data_dir)
    text = TextEncoder(str(backbone)).encode(items["text"].tolist())
    ItemIndex.from_embeddings(items["item_idx"].to_numpy(), text, items["category"],
                              encoder=str(backbone)).save(cfg.index_dir)
    model = SASRec(N_ITEMS, cfg.retriever, text)
    with torch.no_grad():
        model.item.weight.zero_()  # an item's vector is W x(text): a text twin scores alike
    save_retriever(cfg.retriever_model_dir, model, cfg.retriever)
    build_retriever_index(cfg)
    return {"cfg": cfg, "overrides": overrides}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """uvicorn serving the app's FastAPI routes; ``use(ingress)`` picks the replica that answers."""
    import uvicorn
    from ray import serve
    from rayrec.serving.app import _absolute_dirs
    from rayrec.serving.http_app import fastapi_app
    from rayrec.serving.retrieval import RetrievalDeployment

    run = _build_run(tmp_path_factory.mktemp("catalog_admin"))
    shared = _absolute_dirs(run["cfg"]).model_dump(mode="json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ADMIN_ENV, f"{ADMIN_KEY},second-admin-key")
        retrieval = RetrievalDeployment.func_or_class(shared)
        admin = _ingress(shared, retrieval)
        no_admin = _ingress(shared | {"serve": shared["serve"] | {"admin_api_keys_env": NO_ADMIN_ENV}}, retrieval)
        ctx = SimpleNamespace(servable_object=admin)
        mp.setattr(serve, "get_replica_context", lambda: ctx)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)

        def use(ingress) -> None:
            ctx.servable_object = ingress

        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", retrieval=retrieval, admin=admin, no_admin=no_admin,
                              use=use, shared=shared, cfg=run["cfg"])
        server.should_exit = True
        thread.join(timeout=10)
        for ingress in (admin, no_admin):
            ingress.events.close()


def _post(ep, path: str, body: dict, key: str | None = ADMIN_KEY, bearer: bool = False):
    headers = {} if key is None else ({"authorization": f"Bearer {key}"} if bearer else {"x-api-key": key})
    return httpx.post(f"{ep.url}{path}", json=body, headers=headers, timeout=60)


def _recommend(ep, body: dict) -> dict:
    r = httpx.post(f"{ep.url}/recommend", json={"diversity": 0.0} | body, headers={"x-api-key": API_KEY}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _item(item_id: str, title: str, genres=("Comedy",), **extra) -> dict:
    return {"item_id": item_id, "title": title, "genres": list(genres)} | extra


# ---- tests ---------------------------------------------------------------------------------

def test_item_index_add_appends_searchable_rows_all_or_nothing():
    from rayrec.retrieval.index import ItemIndex

    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    for kind in ("flat", "ivf"):
        index = ItemIndex.from_embeddings(np.arange(50), base, ["a"] * 50, index_type=kind, nlist=1)
        new = rng.normal(size=(2, 8)).astype(np.float32) * 10  # far out: the top hit of its own direction
        index.add([50, 51], new, ["b", "b"])
        assert len(index) == 52 and index.has(51) and index.meta["count"] == 52
        np.testing.assert_array_equal(index.embeddings_for([51, 0]), np.stack([new[1], base[0]]))
        assert index.search(new[1], 1)[0][0] == 51
        assert [i for i, _ in index.search(new[0], 5, category="b")] == [50, 51]
        assert index.search(new[1], 1, exclude={51})[0][0] != 51
        with pytest.raises(ValueError, match="already in the index"):
            index.add([52, 50], new, ["c", "c"])  # 50 is taken: nothing of the call is added
        with pytest.raises(ValueError, match="shape"):
            index.add([52], np.zeros((1, 3), np.float32), ["c"])
        assert len(index) == 52 and not index.has(52) and index.index.ntotal == 52


def test_catalog_log_reads_each_commit_once_across_merges_and_retries(tmp_path):
    """Commits are read once and in order, also when the writer merges segments between two
    polls; a segment catalog.json does not name is not a commit; a retried commit is not a
    duplicate; a full catalog rejects."""
    from rayrec.serving.catalog import CatalogLog, CatalogWriter

    root = str(tmp_path / "catalog")
    writer, reader = CatalogWriter(root, compact_segments=2), CatalogLog(root)
    row = lambda i: {"item_id": f"i{i}", "title": f"T{i}", "genres": ["G"], "text": f"T{i} | Genres: G",  # noqa: E731
                     "category": "G", "text_key": "k", "text_vector": np.full(3, i, np.float32)}
    assert writer.commit("c1", [row(1)], [], 10)["done"] == ["i1"]
    assert reader.poll()["item_id"].tolist() == ["i1"] and reader.poll() is None
    (tmp_path / "catalog" / "segments" / "seg-000000009-000000009-orphan.parquet").write_bytes(b"half")
    writer.commit("c2", [row(2)], [], 10)
    writer.commit("c3", [row(3)], ["i1"], 10)  # the third segment: merged into one
    assert len(list((tmp_path / "catalog" / "segments").glob("seg-*"))) == 2  # the merged one + the orphan
    rows = reader.poll()
    assert list(zip(rows["seq"], rows["action"], rows["item_id"], strict=True)) == [
        (2, "add", "i2"), (3, "add", "i3"), (3, "hide", "i1")]
    np.testing.assert_array_equal(rows["text_vector"][1], np.full(3, 3, np.float32))
    fresh = CatalogWriter(root, compact_segments=2)  # a writer started after (its actor restarted)
    out = fresh.commit("c3", [row(3), row(4)], ["i1"], 10)  # c3 retried: done already, not "already added"
    assert out["done"] == ["i3", "i4"] and out["rejected"] == {"i1": "item_id: already hidden"}
    out = fresh.commit("c5", [row(3), row(5), row(6)], [], 5)
    assert out["done"] == ["i5"] and out["rejected"] == {
        "i3": "item_id: already added", "i6": "catalog full: serve.max_added_items=5 items added already"}
    assert CatalogLog(root).poll()["item_id"].tolist() == ["i1", "i2", "i3", "i1", "i4", "i5"]


def test_admin_routes_need_an_admin_key(endpoint):
    ep, before = endpoint, endpoint.retrieval.catalog.seq
    body = {"items": [_item("auth-1", "Comedy Story Auth")]}
    ep.use(ep.no_admin)  # no admin keys configured: the routes are off, whatever is presented
    r = _post(ep, "/items", body)
    assert r.status_code == 403 and "no admin keys" in r.json()["detail"]
    assert _post(ep, "/items/hide", {"item_ids": ["1000"]}).status_code == 403
    ep.use(ep.admin)
    r = _post(ep, "/items", body, key=None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _post(ep, "/items", body, key="not-a-key").status_code == 401
    r = _post(ep, "/items", body, key=API_KEY)  # a client key: known, not allowed
    assert r.status_code == 403 and "client API key" in r.json()["detail"]
    for answer in (r, _post(ep, "/items", body, key="not-a-key")):
        assert API_KEY not in answer.text and "not-a-key" not in answer.text  # keys are never echoed
    assert ep.retrieval.catalog.seq == before and "auth-1" not in ep.retrieval.store.item_idx_of
    r = _post(ep, "/items", body, key="second-admin-key", bearer=True)
    assert r.status_code == 200 and r.json()["added"] == ["auth-1"], r.text


def test_rows_are_checked_one_by_one(endpoint):
    ep = endpoint
    rows = [
        _item("mix-1", "Drama Story New", ["Drama"], text="a quiet family drama"),
        _item("mix-2", "  ", ["Drama"]),  # empty title
        _item("1003", "Sci-Fi Story 3", ["Sci-Fi"]),  # a catalog id
        _item("mix-1", "Drama Story Again", ["Drama"]),  # repeated in the request
        _item("mix-3", "Horror Story New", ["Horror"], text="x" * 201),  # serve.max_text_length
        _item("mix-4", "Horror Story Newer", ["Horror", ""]),
    ]
    r = _post(ep, "/items", {"items": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == ["mix-1"] and body["note"] is None and body["catalog_version"] >= 1
    reasons = {(x["index"], x["item_id"]): x["reason"] for x in body["rejected"]}
    assert reasons == {
        (1, "mix-2"): "title: empty", (2, "1003"): "item_id: already in the catalog",
        (3, "mix-1"): "item_id: repeated in this request (first at index 0)",
        (4, "mix-3"): "text: longer than 200 characters (serve.max_text_length)",
        (5, "mix-4"): "genres[1]: empty"}
    store = ep.retrieval.store
    idx = store.item_idx_of["mix-1"]
    assert idx >= N_ITEMS and idx in store.new_items and store.category_of[idx] == "Drama"
    assert store.item_rows([idx])["text"].item() == "Drama Story New | Genres: Drama | a quiet family drama"
    assert ep.retrieval.index.has(idx) and ep.retrieval.retriever.index.has(idx)
    # Every row bad: 422 with the same body; posting mix-1 again says it was added already.
    r = _post(ep, "/items", {"items": [_item("mix-1", "Drama Story New", ["Drama"]), _item("", "No Id")]})
    assert r.status_code == 422 and r.json()["added"] == []
    assert [x["reason"] for x in r.json()["rejected"]] == ["item_id: already added", "item_id: empty"]
    # The schema and the row bound: one error body naming the field.
    r = _post(ep, "/items", {"items": [_item("mix-9", "T") | {"year": 1999}]})
    assert r.status_code == 422 and r.json()["detail"] == ["items.0.year: unknown field"]
    r = _post(ep, "/items", {"items": [_item(f"b{i}", "T") for i in range(9)]})
    assert r.status_code == 422 and "serve.admin_max_rows" in r.json()["detail"]
    events = _catalog_events(ep)
    assert events.loc[events["item_id"] == "mix-1", ["action", "item_idx", "retriever"]].values.tolist() == [
        ["add", idx, True]]


def _catalog_events(ep):
    from rayrec.serving.eventlog import read_catalog_events

    ep.admin.events.flush()
    return read_catalog_events(ep.cfg.event_log_dir)


def test_a_posted_item_is_recommended_from_warm_history_and_text(endpoint):
    """The new item has warm item 12's text: the sequential retriever (its vector from
    NewItemEncoder) scores it as item 12 and serves it beside it for a warm history."""
    ep = endpoint
    assert _post(ep, "/items", {"items": [_item("twin-12", "Comedy Story 12")]}).status_code == 200
    history = ["1000", "1004", "1008"]  # Comedy items 0, 4, 8
    body = _recommend(ep, {"history": history, "k": 55})
    assert body["retrieval_source"] == "sequence" and not body["degraded"]
    score = {it["item_id"]: it["scores"]["retrieval"] for it in body["items"]}
    assert "twin-12" in score, "the added item never reached the retriever's index"
    assert score["twin-12"] == pytest.approx(score["1012"], abs=1e-4)
    ids = [it["item_id"] for it in body["items"]]
    assert abs(ids.index("twin-12") - ids.index("1012")) == 1
    text = _recommend(ep, {"query": "Comedy Story 12 | Genres: Comedy", "k": 2})  # the text of both (random BERT)
    assert text["retrieval_source"] == "text" and {it["item_id"] for it in text["items"]} == {"twin-12", "1012"}


def test_every_replica_and_a_restart_serve_posted_items(endpoint):
    """Another replica (its own copy of the indexes) serves a posted item within a few
    refreshes; a replica started later loads it with its stored vectors (no embedding)."""
    from rayrec.serving.retrieval import RetrievalDeployment, RetrievalRequest

    ep = endpoint
    other = RetrievalDeployment.func_or_class(ep.shared)
    assert _post(ep, "/items", {"items": [_item("sync-1", "Horror Story Sync", ["Horror"])]}).status_code == 200
    t0, seen = time.perf_counter(), False
    while not seen and time.perf_counter() - t0 < 5:
        cand = asyncio.run(other.retrieve(RetrievalRequest(query="Horror Story Sync | Genres: Horror",
                                                           num_candidates=5, with_embeddings=False)))
        seen = "sync-1" in cand["item_id"]
        time.sleep(0.1)
    assert seen, "the other replica never loaded the posted item"
    assert cand["new"][cand["item_id"].index("sync-1")]
    restarted = RetrievalDeployment.func_or_class(ep.shared)
    added = [i for i in ep.retrieval.store.item_idx_of if ep.retrieval.store.item_idx_of[i] >= N_ITEMS]
    for replica in (other, restarted):  # every added item, under the same item_idx everywhere
        assert {i: replica.store.item_idx_of[i] for i in added} == {i: ep.retrieval.store.item_idx_of[i] for i in added}
    assert restarted._item_encoder is None and restarted._new_item_encoder is None  # vectors were stored
    idx = restarted.store.item_idx_of["sync-1"]
    np.testing.assert_allclose(restarted.retriever.index.embeddings_for([idx]),
                               ep.retrieval.retriever.index.embeddings_for([idx]))


def test_hidden_items_are_never_recommended_again(endpoint):
    from rayrec.serving.retrieval import RetrievalDeployment

    ep = endpoint
    assert _post(ep, "/items", {"items": [_item("hide-1", "Comedy Story 16")]}).status_code == 200
    before = _recommend(ep, {"history": ["1000", "1004"], "k": 55})
    assert {"hide-1", "1016", "1001"} <= {it["item_id"] for it in before["items"]}
    r = _post(ep, "/items/hide", {"item_ids": ["hide-1", "1016", "1001", "nope"]})
    assert r.status_code == 200, r.text
    assert r.json()["hidden"] == ["hide-1", "1016", "1001"]
    assert r.json()["rejected"] == [{"item_id": "nope", "index": 3, "reason": "item_id: not in the catalog"}]
    answers = [_recommend(ep, {"history": ["1000", "1004"], "k": 55}),  # sequence
               _recommend(ep, {"query": "Comedy Story 16", "k": 55}),  # text
               _recommend(ep, {"user_id": "nobody", "k": 55})]  # popularity
    for body in answers:
        assert not {"hide-1", "1016", "1001"} & {it["item_id"] for it in body["items"]}, body["retrieval_source"]
    r = _post(ep, "/items/hide", {"item_ids": ["1016"]})
    assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "item_id: already hidden"
    restarted = RetrievalDeployment.func_or_class(ep.shared)
    assert {restarted.store.item_idx_of[i] for i in ("hide-1", "1016", "1001")} <= restarted.hidden
    events = _catalog_events(ep)
    assert set(events.loc[events["action"] == "hide", "item_id"]) == {"hide-1", "1016", "1001"}


def test_generation_names_added_titles_and_never_hidden_ones(endpoint, tmp_path):
    """The generation deployment loads the catalog's commits too: an added title joins its trie
    under the item_idx retrieval gave it; hidden items are banned."""
    from rayrec.models.tiny import make_tiny_backbone
    from rayrec.serving.generation import GenerationDeployment

    ep = endpoint
    shared = ep.shared | {"serve": ep.shared["serve"] | {"generation": ep.shared["serve"]["generation"] | {
        "enabled": True, "backbone": str(make_tiny_backbone("llama", tmp_path / "tiny_llama")),
        "k": 5, "beams": 5, "explain_max_new_tokens": 6}}}
    gen = GenerationDeployment.func_or_class(shared)
    new = [_item("gen-1", "Zebra Crossing Tales", ["Drama"]), _item("gen-2", "Zebra Crossing Again", ["Drama"])]
    assert _post(ep, "/items", {"items": new}).status_code == 200
    assert _post(ep, "/items/hide", {"item_ids": ["gen-2", "1002"]}).status_code == 200
    idx = ep.retrieval.store.item_idx_of["gen-1"]
    out = gen.generate([0, idx], None, 5)  # names an item it does not know yet: loads the commits first
    assert len(gen.texts) == ep.retrieval.store.next_item_idx and gen.generator.titles[idx] == "Zebra Crossing Tales"
    tokens = gen.generator.tokenizer("Zebra Crossing Tales", add_special_tokens=False)["input_ids"]
    assert gen.generator.trie.view().item([*tokens, gen.generator.trie.end_id]) == idx
    hidden = {ep.retrieval.store.item_idx_of[i] for i in ("gen-2", "1002")}
    assert hidden <= gen.hidden and not hidden & set(out["item_idx"])
    wide = gen.generator.recommend(np.array([0]), 12, beams=12, exclude=gen.hidden)[0]
    assert not hidden & set(wide.tolist())
    beyond = len(gen.texts) + 5  # committed elsewhere, not loadable here: said, in the slate's order
    explained = gen.explain([0, idx], None, [idx, beyond, 3], time.time() + 30)
    assert [e["item_idx"] for e in explained] == [idx, beyond, 3] and explained[1]["status"] == "unavailable"
    assert {e["status"] for e in (explained[0], explained[2])} <= {"explained", "ungrounded", "unfinished"}


def test_openapi_lists_the_admin_routes_with_config_limits(endpoint):
    schema = httpx.get(f"{endpoint.url}/openapi.json", timeout=30).json()
    assert {"/items", "/items/hide"} <= set(schema["paths"])
    props = schema["components"]["schemas"]
    assert props["AddItemsRequest"]["properties"]["items"]["maxItems"] == 8  # serve.admin_max_rows
    assert set(schema["paths"]["/items"]["post"]["responses"]) >= {"200", "401", "403", "413", "422", "503"}
    shapes = schema["paths"]["/items"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["anyOf"]
    assert {s["$ref"].rsplit("/", 1)[-1] for s in shapes} == {"AddItemsResponse", "ErrorBody"} <= set(props)


def test_an_admin_key_that_is_also_a_client_key_is_refused(tmp_path, monkeypatch):
    from rayrec.serving.config import ServeConfig
    from rayrec.serving.ingress import _admin_and_client_keys

    (tmp_path / "keys").write_text("shared-key\n")
    monkeypatch.setenv(ADMIN_ENV, "admin-only,shared-key")
    sc = ServeConfig(admin_api_keys_env=ADMIN_ENV, api_keys_file=str(tmp_path / "keys"))
    with pytest.raises(ValueError, match="admin keys must be separate") as err:
        _admin_and_client_keys(sc, [])
    assert "shared-key" not in str(err.value)


def test_cli_adds_from_a_file_and_names_bad_lines(endpoint, tmp_path, monkeypatch, capsys):
    from rayrec.cli import main

    ep = endpoint
    monkeypatch.setenv("MY_ADMIN_KEY", ADMIN_KEY)
    good = tmp_path / "items.jsonl"
    good.write_text("\n".join(json.dumps(x) for x in [
        _item("cli-1", "Drama Story Cli", ["Drama"]), {"item_id": 77001, "title": "Numbered"},
        _item("cli-1", "Drama Story Cli", ["Drama"])]) + "\n")
    argv = ["catalog", "add", "--file", str(good), "--url", ep.url, "--admin-key-env", "MY_ADMIN_KEY"]
    assert main(argv) == 1  # one row rejected: said, and the exit status says so
    out = capsys.readouterr()
    assert "added 2: cli-1, 77001" in out.out
    assert "rejected (line 3) cli-1: item_id: repeated in this request (first at index 0)" in out.out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_item("cli-2", "Fine")) + "\n{not json\n")
    before = ep.retrieval.catalog.seq
    assert main(["catalog", "add", "--file", str(bad), "--url", ep.url, "--admin-key-env", "MY_ADMIN_KEY"]) == 1
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert ep.retrieval.catalog.seq == before and "cli-2" not in ep.retrieval.store.item_idx_of
    assert main(["catalog", "hide", "--item-id", "cli-1", "--url", ep.url, "--admin-key-env", "MY_ADMIN_KEY"]) == 0
    out = capsys.readouterr()
    assert "hidden 1: cli-1" in out.out and ADMIN_KEY not in out.out + out.err
