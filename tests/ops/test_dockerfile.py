"""The Dockerfile, read as Docker reads it (no Docker engine needed).

Instructions are parsed (line continuations, comments, exec and shell forms) and split
into stages; the checks are about what the image will be: the files it copies exist and
survive .dockerignore, it runs the README's entry point under tini as a non-root user
with the store volume, and its Python packages are exactly the locked requirements.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT
from twinfer.runtime_env import RUNTIME_ENVIRONMENT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
STORE = "/iotedge/storage"
BUILD_TOOLS = {"gcc", "g++", "cc", "clang", "make", "cmake", "build-essential", "python3-dev", "python-dev",
               "libc6-dev", "libpython3-dev", "pkg-config", "autoconf", "automake", "libtool", "cargo", "rustc"}


@dataclass
class Instruction:
    keyword: str
    args: str

    @property
    def exec_form(self) -> list[str] | None:
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    logical, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue  # blank lines, comments and parser directives
        if buffer and line.startswith("#"):
            continue  # comments inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
            continue
        assert stages, f"{keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def command_words(instruction: Instruction | None) -> list[str]:
    if instruction is None:
        return []
    return instruction.exec_form or ["/bin/sh", "-c", instruction.args]


def copy_sources(instruction: Instruction) -> tuple[list[str], str, dict[str, str]]:
    words = instruction.exec_form or shlex.split(instruction.args)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], paths[-1], flags


def shell_segments(script: str) -> list[list[str]]:
    """Simple commands of a RUN script (split on && ; ||), as words."""
    words = shlex.split(script)
    segments, current = [], []
    for word in words:
        if word in ("&&", ";", "||", "|"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    return [s for s in segments if s]


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per .dockerignore line, in Docker's syntax (Go filepath.Match plus **)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def excluded(relative: str, patterns) -> bool:
    """Docker excludes a path when the last pattern matching it, or a parent directory of it, is not negated."""
    parts = relative.split("/")
    result = False
    for negated, regex in patterns:
        if any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts))):
            result = not negated
    return result


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


def test_every_copy_source_exists_and_survives_dockerignore(stages):
    patterns = dockerignore_patterns()
    stage_names = {s.name for s in stages if s.name}
    copied = 0
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            sources, _, flags = copy_sources(instruction)
            if "from" in flags:
                assert flags["from"] in stage_names, instruction
                continue
            for source in sources:
                path = PROJECT_ROOT / source
                relative = path.relative_to(PROJECT_ROOT).as_posix()
                assert path.exists(), f"COPY source {source} does not exist"
                assert not excluded(relative, patterns), f"COPY source {source} is excluded by .dockerignore"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                shipped = [p for p in files if not excluded(p.relative_to(PROJECT_ROOT).as_posix(), patterns)]
                dropped = {p.relative_to(PROJECT_ROOT).as_posix() for p in files} - {
                    p.relative_to(PROJECT_ROOT).as_posix() for p in shipped}
                assert all("__pycache__" in p for p in dropped), f"needed files dropped by .dockerignore: {dropped}"
                assert shipped, source
                copied += 1
    assert copied
    # What the service needs at run time is in the image.
    needed = ["service/__main__.py", "workers/app.py", "workers/openapi.json", "gunicorn.conf.py",
              "models/default/model.onnx", "models/default/labels.txt"]
    final_copies = [copy_sources(i) for i in stages[-1].all("COPY") if "from" not in copy_sources(i)[2]]
    for need in needed:
        assert any(need == s.rstrip("/") or need.startswith(s.rstrip("/") + "/") for sources, _, _ in final_copies
                   for s in sources), need
        assert not excluded(need, patterns), need


def test_dockerignore_matcher_follows_docker_semantics():
    patterns = dockerignore_patterns()
    assert excluded("tests/service/test_cli.py", patterns) and excluded(".venv/bin/python", patterns)
    assert excluded("service/__pycache__/cli.cpython-311.pyc", patterns)
    assert not excluded("service/cli.py", patterns) and not excluded("requirements.txt", patterns)


def test_final_stage_runs_the_readme_entry_point_under_tini(final):
    entrypoint = command_words(final.last("ENTRYPOINT"))
    command = command_words(final.last("CMD"))
    assert entrypoint and Path(entrypoint[0]).name == "tini", entrypoint  # tini is PID 1: signals, zombies
    assert entrypoint[1:] == ["--"], entrypoint
    assert command in (["python", "-m", "service"], ["python", "-m", "service", "run"]), command
    # The same entry point as the README and `make run`.
    assert "python -m service" in (PROJECT_ROOT / "README.md").read_text()
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.M).group(1).split()
    assert run_recipe[-2:] == ["-m", "service"], run_recipe
    installs = [s for i in final.all("RUN") for s in shell_segments(i.args) if s[:2] == ["apt-get", "install"]]
    assert any("tini" in s for s in installs)


def _pip_installs(stage: Stage) -> list[list[str]]:
    found = []
    for instruction in stage.all("RUN"):
        for words in shell_segments(instruction.args):
            if "pip" in Path(words[0]).name or words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                found.append(words)
    return found


def test_image_installs_exactly_the_locked_requirements(stages, final):
    requirement_copies = {}
    for stage in stages:
        for instruction in stage.all("COPY"):
            sources, destination, flags = copy_sources(instruction)
            if "from" not in flags and sources == ["requirements.txt"]:
                requirement_copies[destination] = stage
    assert requirement_copies, "requirements.txt is never copied into a build stage"
    installs = [words for stage in stages for words in _pip_installs(stage)]
    assert installs, "no pip install found"
    for words in installs:
        pip_args = words[words.index("install") + 1:] if "install" in words else None
        assert pip_args is not None, f"pip used for something else than installing: {words}"
        options = [w for w in pip_args if w.startswith("-")]
        assert set(options) <= {"--no-cache-dir", "-r", "--require-hashes", "--no-deps"}, words
        others = [w for w in pip_args if not w.startswith("-")]
        assert pip_args[pip_args.index("-r") + 1] in requirement_copies, words
        assert others == [pip_args[pip_args.index("-r") + 1]], f"pip installs more than requirements.txt: {words}"
    assert not _pip_installs(final), "the final stage must copy the built venv, not run pip"


def test_requirements_are_a_closed_lock_of_exact_pins():
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", line), f"not an exact pin: {raw!r}"
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    # Every dependency of a locked package is locked too, so pip installs nothing else
    # (read from the metadata of the same versions installed in this venv).
    for name, version in pins.items():
        try:
            installed = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: run make test (it installs requirements.txt)")
        assert installed.version == version, f"{name}: venv has {installed.version}, lock says {version}"
        for spec in installed.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pins, f"{name} needs {requirement.name}, which requirements.txt does not lock"
            assert requirement.specifier.contains(pins[dependency], prereleases=True), (name, spec, pins[dependency])


def final_env(stage: Stage) -> dict[str, str]:
    """The variables the stage's ENV instructions set (both ENV forms)."""
    env = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.args)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(w.split("=", 1) for w in words)
    return env


def test_final_stage_is_non_root_with_store_volume_and_healthcheck(final):
    user = final.last("USER")
    assert user is not None, "the final stage runs as root"
    name = user.args.split(":")[0]
    assert name not in ("root", "0"), user.args
    runs = " ".join(i.args for i in final.all("RUN"))
    if not name.isdigit():
        created = re.search(rf"useradd\b[^&;]*--uid (\d+)[^&;]*\b{re.escape(name)}\b", runs)
        assert created and int(created.group(1)) != 0, "the USER is not created with a non-zero uid"
    # The store volume, owned by that user (set before VOLUME: later changes are discarded).
    volumes = [v for i in final.all("VOLUME") for v in (i.exec_form or i.args.split())]
    assert STORE in volumes
    keywords = [i.keyword for i in final.instructions]
    chown = next(index for index, i in enumerate(final.instructions)
                 if i.keyword == "RUN" and re.search(rf"chown\s+{re.escape(name)}\S*\s+{re.escape(STORE)}", i.args))
    assert chown < keywords.index("VOLUME")
    assert final_env(final).get("TWINFER_STORE") == STORE
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None and " CMD " in f" {healthcheck.args} " and "service.healthcheck" in healthcheck.args


def test_image_sets_the_runtime_environment_for_any_process(final):
    """ONNX Runtime telemetry off (twinfer/runtime_env.py) even for a process that imports
    a runtime without importing ``workers`` first."""
    env = final_env(final)
    assert {name: env.get(name) for name in RUNTIME_ENVIRONMENT} == RUNTIME_ENVIRONMENT


def test_final_stage_installs_no_build_tools(final):
    for instruction in final.all("RUN"):
        for words in shell_segments(instruction.args):
            if words[:2] in (["apt-get", "install"], ["apt", "install"]) or words[:2] == ["apk", "add"]:
                packages = {w for w in words[2:] if not w.startswith("-")}
                assert not packages & BUILD_TOOLS, packages & BUILD_TOOLS
    assert "slim" in final.base or "distroless" in final.base, final.base


def test_no_parser_directive_pulls_a_frontend_image():
    """``# syntax=`` makes BuildKit pull that frontend image from a registry before building:
    an air-gapped or mirror-only builder fails on it. The built-in frontend reads this file."""
    directives = []
    for raw in DOCKERFILE.read_text().splitlines():
        match = re.fullmatch(r"#\s*([a-zA-Z]+)\s*=\s*(.*?)\s*", raw)
        if not match:
            break  # parser directives are only recognised before the first other line
        directives.append(match.group(1).lower())
    assert "syntax" not in directives, "drop the # syntax= directive"
    assert not re.search(r"(?im)^#\s*syntax\s*=", DOCKERFILE.read_text())
