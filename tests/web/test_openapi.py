"""The OpenAPI document matches the routes the app answers, both ways."""

from __future__ import annotations

import orjson
from web_support import BEARER
from werkzeug.test import Client

from conveyor.web import WSGIApplication
from conveyor.web.openapi import openapi_path


def document(api: Client) -> dict:  # type: ignore[type-arg]
    response = api.get("/api/openapi.json", headers=BEARER)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    return orjson.loads(response.get_data())  # type: ignore[no-any-return]


def served(web: WSGIApplication) -> set[tuple[str, str]]:
    """(path, method) of every API and metrics rule of the WSGI app's URL map."""
    out = set()
    for rule in web.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule == "/metrics":
            out |= {(openapi_path(rule.rule), m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return out


def test_every_route_is_documented_and_every_operation_is_served(api: Client, web: WSGIApplication) -> None:
    doc = document(api)
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == served(web)
    assert ("/api/jobs", "post") in documented and ("/api/events", "get") in documented


def test_the_document_is_well_formed(api: Client) -> None:
    doc = document(api)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    ids = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.add(op["operationId"])
            assert op["summary"] and op["responses"], (path, method)
            if "{" in path:
                names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
                assert names == {path.split("{")[1].split("}")[0]}
            for response in op["responses"].values():
                for media in response.get("content", {}).values():
                    ref = media["schema"].get("$ref")
                    if ref:
                        assert ref.rsplit("/", 1)[1] in schemas
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in schemas
            if method in ("post", "delete"):
                assert {"401", "403"} <= set(op["responses"]), (path, method)
    assert len(ids) == sum(len(item) for item in doc["paths"].values())
    enqueue = doc["paths"]["/api/jobs"]["post"]["responses"]
    assert {"200", "201", "404", "413", "422"} <= set(enqueue)


def test_servers_follow_the_mount_point(web: WSGIApplication) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    mounted = Client(DispatcherMiddleware(lambda e, s: [], {"/conveyor": web}))
    doc = orjson.loads(mounted.get("/conveyor/api/openapi.json", headers=BEARER).get_data())
    assert doc["servers"] == [{"url": "/conveyor"}]
