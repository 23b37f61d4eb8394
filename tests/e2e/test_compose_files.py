"""The compose files and .env.example agree: every setting the compose files read is documented,
and none of the files needs a registry or a host port for the workers. No Docker needed."""

from __future__ import annotations

import importlib
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


# Settings given to compose under another name than the service reads.
RENAMED = {"TZ": "TRIGGER_TZ"}
# What docker-compose.yml sets itself, or cannot pass on as a plain value.
SET_BY_THE_STACK = {
    "controller": {"TRIGGER_DB", "TRIGGER_BIND",
                   "TRIGGER_SCHEDULE_FILE"},  # a path in the container: mounted by an override
    "worker": {"WORKER_WORKDIR", "WORKER_STATE_DIR", "WORKER_BIND"},
}


def settings_read_by(package: str) -> set[str]:
    """The environment variables a service reads: its settings table, its gunicorn config and
    (for the images) its entrypoint."""
    config = importlib.import_module(f"{package}.config")
    names = {var for var, _, _ in config.SETTINGS.values()}
    sources = [ROOT / package / "gunicorn_conf.py"]
    names |= set(re.findall(r'environ\.get\("([A-Z][A-Z0-9_]*)"', sources[0].read_text()))
    entrypoint = {"trigger_server": "server", "worker": "worker"}[package]
    script = (ROOT / "docker" / f"{entrypoint}-entrypoint.sh").read_text()
    names |= {n for n in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script)
              if n.startswith(("TRIGGER_", "WORKER_"))}
    return names - {"TRIGGER_WORKER_TOKEN_FILE"}


@pytest.mark.parametrize("service,package", [("controller", "trigger_server"),
                                             ("worker", "worker")])
def test_every_setting_a_service_reads_can_be_set_from_env(service, package):
    """README and .env.example: put a setting in .env and the stack uses it. A setting the
    compose file did not hand on would be dropped without a word."""
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"][service]["environment"]
    missing = settings_read_by(package) - set(environment) - SET_BY_THE_STACK[service]
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)} to {service}"
    for name in set(environment) & settings_read_by(package):
        value = str(environment[name])
        given_as = RENAMED.get(name, name)
        if name not in ("TRIGGER_DB", "TRIGGER_WORKER_TOKEN_FILE"):
            assert value == f"${{{given_as}:-}}" or value.startswith(f"${{{given_as}:-"), name


def test_the_hosts_own_timezone_does_not_reach_the_controller():
    """Compose fills ${TZ} from the shell first: a host's TZ=:/etc/localtime would stop the
    controller (not a zone name), a valid one would move the schedules off UTC unasked."""
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["controller"]["environment"]
    assert environment["TZ"] == "${TRIGGER_TZ:-}"
