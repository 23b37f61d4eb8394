"""The OpenAPI description and the routes cannot drift apart."""

import json
import re

import pytest

from trigger_server import create_app


@pytest.fixture
def app(tmp_path):
    return create_app({"DB": str(tmp_path / "t.db"), "INSECURE": True, "WORKER_TOKEN": "",
                       "WORKERS": []})


def routes(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        found |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_every_route_is_documented_and_every_documented_route_exists(app):
    spec = json.loads(app.test_client().get("/openapi.json").data)
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes(app) == documented


def test_the_description_is_served_without_a_token(tmp_path):
    app = create_app({"DB": str(tmp_path / "t.db"), "INSECURE": True, "WORKER_TOKEN": "",
                      "WORKERS": [], "API_TOKEN": "s3cret"})
    client = app.test_client()
    assert client.get("/openapi.json").json["openapi"].startswith("3.")
    assert client.get("/jobs").status_code == 401
