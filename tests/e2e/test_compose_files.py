"""The compose files and .env.example agree: every setting the compose files read is documented,
and none of the files needs a registry or a host port for the workers. No Docker needed."""

from __future__ import annotations

import re

import pytest

from .conftest import settings_documented
from .stack import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.site.yml", "docker-compose.docker-exec.yml",
                 "docker-stack.yml")


def compose_variables(name: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / name).read_text()))


def test_every_setting_the_compose_files_read_is_in_env_example():
    documented = set(settings_documented())

    for name in COMPOSE_FILES:
        assert compose_variables(name) <= documented, name


def test_compose_files_use_the_compose_specification_without_version():
    for name in COMPOSE_FILES:
        assert "version" not in yaml.safe_load((ROOT / name).read_text()), name


def test_only_the_controller_publishes_a_port_and_only_on_localhost():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    assert "ports" not in services["worker"]
    assert "container_name" not in services["worker"]
    assert all(p.startswith("127.0.0.1:") for p in services["controller"]["ports"])


def test_every_service_has_an_image_tag_next_to_its_build():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    for name, service in services.items():
        assert "image" in service and "build" in service, name
