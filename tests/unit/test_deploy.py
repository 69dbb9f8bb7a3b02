"""The Dockerfile and deploy/docker-compose.yml agree with the code they run: every `chatbuffer`
command they start parses with this CLI, every setting they pass exists and takes the value they
give it. (Docker itself cannot run here: these read the files.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from chatbuffer import cli
from chatbuffer.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "chatbuffer.env.example"
SETTINGS = {name.upper() for name in Settings.model_fields}

#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` as compose interpolates them.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    return [str(a) for a in parsed]


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def chatbuffer_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {n: s for n, s in services.items() if "build" in s or "chatbuffer" in s.get("image", "")}


def example() -> dict[str, str]:
    """deploy/chatbuffer.env.example, as compose reads a .env file."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolated(value: str) -> str:
    """``value`` as compose would pass it with the example's values; a stand-in where the
    example leaves a required value blank (a token)."""
    given = example()

    def one(found: re.Match[str]) -> str:
        if given.get(found["name"]):
            return given[found["name"]]
        if found["op"] in (":-", "-"):
            return found["arg"]
        return f"stand-in-for-{found['name'].lower()}-0123456789"

    return INTERPOLATION.sub(one, value)


def assert_runs(command: list[str]) -> None:
    """``chatbuffer <command>`` parses: the subcommand and every option exist."""
    try:
        cli._parser().parse_args(command)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"`chatbuffer {shlex.join(command)}` is not a command this CLI has ({exc})")


def test_the_image_is_multi_stage_slim_python_311_and_runs_as_a_non_root_user() -> None:
    build, *_, final = stages()
    # An ARG before the first FROM names the base of every stage.
    defaults = dict(
        re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text().split("\nFROM", 1)[0], re.M)
    )
    bases = [INTERPOLATION.sub(lambda m: defaults[m["name"]], s[0][1].split()[0]) for s in stages()]
    assert len(bases) >= 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    installs = " ".join(a for i, a in build if i == "RUN")
    assert "uv sync --frozen --no-dev" in installs
    # Nothing of the build stage but the environment reaches the final one.
    copies = [a for i, a in final if i == "COPY"]
    assert copies and all("--from=build" in c and "/app/.venv" in c for c in copies), copies
    assert not any("uv" in a.split() for i, a in final if i in ("RUN", "COPY"))
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0"), users


def test_the_image_starts_a_command_the_cli_has() -> None:
    final = stages()[-1]
    [entrypoint] = [exec_form(a) for i, a in final if i == "ENTRYPOINT"]
    [command] = [exec_form(a) for i, a in final if i == "CMD"]
    assert entrypoint == ["chatbuffer"]
    assert_runs(command)


def test_compose_runs_postgres_a_one_shot_migrate_then_one_api_and_one_worker() -> None:
    services = compose()["services"]
    assert services["db"]["image"].startswith("postgres:")
    ours = chatbuffer_services()
    commands = {name: service["command"][0] for name, service in ours.items()}
    assert commands == {"migrate": "migrate", "api": "api", "worker": "worker"}
    assert ours["migrate"]["restart"] == "no"
    assert ours["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert ours[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
        assert "replicas" not in ours[name].get("deploy", {})
    # The api listens on every interface of its container, where the port is published.
    api = ours["api"]["command"]
    assert api[api.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_every_command_compose_runs_exists_in_the_cli(service: str) -> None:
    assert_runs([str(a) for a in chatbuffer_services()[service]["command"]])


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_every_variable_compose_sets_is_a_setting_and_its_value_is_accepted(
    service: str, tmp_path: Path
) -> None:
    environment: dict[str, Any] = chatbuffer_services()[service]["environment"]
    unknown = sorted(set(environment) - SETTINGS)
    assert not unknown, f"{service} sets variables chatbuffer does not read: {unknown}"
    values = {k.lower(): interpolated(str(v)) for k, v in environment.items()}
    # The instructions file is mounted at run time; here any readable file stands in.
    values["bot_instructions_file"] = str(tmp_path / "bot.md")
    settings = load_settings(**values)
    assert settings.database_url.startswith("postgresql://chatbuffer:")
    assert not settings.is_sqlite
    settings.require_for("worker")


def test_the_env_example_names_only_settings_and_compose_variables() -> None:
    used = {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    named = set(example())
    assert named <= used, sorted(named - used)
    assert named - {"POSTGRES_PASSWORD"} <= SETTINGS
    # Everything compose requires (`${NAME:?...}`) is in the example.
    required = {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text()) if m["op"] == ":?"}
    assert required <= named, sorted(required - named)
