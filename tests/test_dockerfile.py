"""Lints the Dockerfile and .dockerignore by parsing them: no container engine runs here, so the image is never built.

It owns the rules the production image must keep (non-root, pinned bases, no baked secrets, no compilers in the final
stage); each rule is also run against a bad Dockerfile to show it can fail.
"""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

SECRET_NAME = re.compile(
    r"(SECRET_KEY|PASSWORD|TOKEN|API_KEY|_SECRET$|^SECRET$|PRIVATE_KEY|DATABASE_URL|EMAIL_URL)", re.I
)
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[\w.+-]+-dev)\b")
ROOT_USERS = {"root", "0", "0:0", "root:root"}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def _env_pairs(args: str) -> list[tuple[str, str]]:
    tokens = shlex.split(args)
    if len(tokens) >= 2 and "=" not in tokens[0]:
        return [(tokens[0], " ".join(tokens[1:]))]  # legacy `ENV NAME value`
    return [(t.partition("=")[0], t.partition("=")[2]) for t in tokens]


def problems(stages: list[Stage], dockerignore: str) -> list[str]:
    """Every rule the image breaks, as readable sentences; empty when it is fit for production."""
    found: list[str] = []
    if not stages:
        return ["no FROM instruction"]
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        image = stage.image
        if image in stage_names:
            continue
        if "@sha256:" in image:
            continue
        _, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else ("", "", "")
        if not tag:
            found.append(f"base image {image} has no tag")
        elif tag == "latest" or not re.match(r"^\d+\.\d+\.\d+", tag):
            found.append(f"base image {image} is not pinned to an exact version")
    final = stages[-1]
    users = [args for instr, args in final.instructions if instr == "USER"]
    if not users:
        found.append("final stage has no USER: it runs as root")
    elif users[-1].strip() in ROOT_USERS:
        found.append(f"final stage runs as {users[-1]}")
    for stage in stages:
        for instr, args in stage.instructions:
            if instr == "ENV":
                for name, value in _env_pairs(args):
                    if SECRET_NAME.search(name) and value:
                        found.append(f"ENV {name} bakes a secret into the image")
            if instr == "ARG" and stage is final:
                name, _, value = args.partition("=")
                if SECRET_NAME.search(name.strip()):
                    found.append(f"ARG {name.strip()} in the final stage exposes a secret in the image history")
    for instr, args in final.instructions:
        if instr == "RUN" and re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", args):
            tools = BUILD_TOOLS.findall(args.split("install", 1)[1])
            if tools:
                found.append(f"final stage installs build tools: {', '.join(sorted(set(tools)))}")
    ignored = {
        line.strip().rstrip("/") for line in dockerignore.splitlines() if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git"):
        if required not in ignored:
            found.append(f".dockerignore does not exclude {required}")
    return found


@pytest.fixture(scope="module")
def stages():
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_has_no_problems_when_linted():
    assert problems(parse_dockerfile(DOCKERFILE.read_text()), DOCKERIGNORE.read_text()) == []


def test_final_stage_is_python_slim_bookworm_when_built(stages):
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    assert re.match(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$", stages[-1].image)


def test_final_stage_runs_as_uid_10001_when_started(stages):
    users = [args for instr, args in stages[-1].instructions if instr == "USER"]
    assert users[-1].split(":")[0] == "10001"


def test_compilers_are_installed_only_in_the_builder_when_built(stages):
    builder_runs = " ".join(args for s in stages[:-1] for instr, args in s.instructions if instr == "RUN")
    assert "build-essential" in builder_runs
    final_copies = [args for instr, args in stages[-1].instructions if instr == "COPY" and "--from=" in args]
    assert any("/opt/venv" in args for args in final_copies), "the venv is copied from the builder, not rebuilt"


def test_production_is_the_environment_and_static_files_are_collected_when_built(stages):
    final = stages[-1]
    env = dict(pair for instr, args in final.instructions if instr == "ENV" for pair in _env_pairs(args))
    assert env.get("CONTROLPLANE_ENV") == "production"
    assert "SECRET_KEY" not in env
    collect = [args for instr, args in final.instructions if instr == "RUN" and "collectstatic" in args]
    assert collect and "SECRET_KEY=" in collect[0], "collectstatic gets a key scoped to its own command"
    assert not any(instr == "ARG" for instr, _ in final.instructions)


def test_default_command_is_gunicorn_when_no_command_is_given(stages):
    cmd = [args for instr, args in stages[-1].instructions if instr == "CMD"][-1]
    assert cmd.startswith("[") and '"gunicorn", "controlplane.wsgi:application"' in cmd
    assert "0.0.0.0:8000" in cmd


def test_default_command_logs_no_query_string_or_referer_when_a_link_holds_a_token(stages):
    import json

    from tests.access_log import access_log_line

    command = json.loads([args for instr, args in stages[-1].instructions if instr == "CMD"][-1])
    assert "--access-logformat" in command, "gunicorn's default access log writes the query string and the Referer"
    line = access_log_line(command[command.index("--access-logformat") + 1])
    assert "GET /console/invitations/accept HTTP/1.1" in line
    assert "token" not in line, line


def test_default_command_hides_a_password_reset_token_when_the_emailed_link_is_followed(stages):
    import importlib
    import json

    from tests.access_log import access_log_line

    command = json.loads([args for instr, args in stages[-1].instructions if instr == "CMD"][-1])
    assert "--logger-class" in command, "the reset link's token is in the path, which the format keeps"
    module, _, name = command[command.index("--logger-class") + 1].rpartition(".")
    logger_class = getattr(importlib.import_module(module), name)
    fmt = command[command.index("--access-logformat") + 1]
    line = access_log_line(fmt, logger_class, path="/console/password-reset/MTI/cq7x2b-5f3e9a0d1c2b3a4f5e6d")
    assert "cq7x2b" not in line and "GET /console/password-reset/MTI/[token] HTTP/1.1" in line, line


def test_dockerignore_excludes_local_state_when_building():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")}
    for pattern in (".venv", ".git", "var/", ".env", ".env.*", ".pytest_cache", "**/*.sqlite3"):
        assert pattern in ignored, pattern


def _locked_names(path: Path) -> set[str]:
    return {re.split(r"[=; ]", line)[0].lower() for line in path.read_text().splitlines() if line[:1].isalnum()}


def test_image_installs_only_the_hashed_runtime_lock_when_built(stages):
    runs = [args for instr, args in stages[0].instructions if instr == "RUN" and "pip install" in args]
    assert runs and all("--require-hashes" in args and "-r requirements.lock" in args for args in runs), runs
    copies = [args for instr, args in stages[0].instructions if instr == "COPY"]
    assert any(args.split()[0] == "requirements.lock" for args in copies), copies
    names = _locked_names(REPO / "requirements.lock")
    assert {"django", "gunicorn", "celery", "psycopg", "prometheus-client"} <= names
    assert not names & {"pytest", "pytest-django", "schemathesis", "factory-boy", "ruff", "mypy"}


def test_every_locked_requirement_has_a_hash_when_locked():
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (REPO / lock).read_text()
        pins = [line for line in text.splitlines() if line[:1].isalnum()]
        assert pins, lock
        for pin in pins:
            assert "==" in pin and pin.rstrip().endswith("\\"), f"{lock}: {pin} is not pinned with hashes"


def test_locks_name_every_requirement_of_their_input_when_locked():
    """An edit to a .in file without `make lock` leaves the lock behind: the install would silently lack it."""
    for source, lock in (("requirements.in", "requirements.lock"), ("requirements-dev.in", "requirements-dev.lock")):
        wanted = {
            re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-")
            for line in (REPO / source).read_text().splitlines()
            if line[:1].isalnum()
        }
        missing = wanted - _locked_names(REPO / lock)
        assert not missing, f"{lock} lacks {sorted(missing)}: run `make lock`"


BAD_DOCKERFILE = """
FROM python:latest AS builder
RUN pip install -r requirements.txt
FROM python
ARG SECRET_KEY=abc
ENV DJANGO_SUPERUSER_PASSWORD=hunter2 METRICS_TOKEN=t0k
RUN apt-get update && apt-get install -y gcc build-essential libpq-dev
USER root
"""


def test_lint_reports_each_problem_when_the_dockerfile_is_unsafe():
    found = problems(parse_dockerfile(BAD_DOCKERFILE), "tests/\n")
    text = "\n".join(found)
    assert "python:latest is not pinned" in text
    assert "base image python has no tag" in text
    assert "final stage runs as root" in text
    assert "ARG SECRET_KEY" in text
    assert "ENV DJANGO_SUPERUSER_PASSWORD" in text and "ENV METRICS_TOKEN" in text
    assert "build tools: build-essential, gcc, libpq-dev" in text
    assert ".dockerignore does not exclude .venv" in text and ".dockerignore does not exclude .git" in text


def test_lint_reports_root_when_the_final_stage_has_no_user():
    found = problems(parse_dockerfile("FROM python:3.11.13-slim-bookworm\nRUN true\n"), ".venv\n.git\n")
    assert found == ["final stage has no USER: it runs as root"]
