"""The component image installs what the tests ran: the Dockerfile, parsed (no Docker daemon
here), pins the same versions as constraints.txt, is multi-stage, runs as a non-root user,
takes its base image by digest and copies every package of the distribution."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(step)
    return out


def pins(text: str) -> dict[str, str]:
    """``name==version`` pins of a requirements/constraints text (names normalised)."""
    found = {}
    for m in re.finditer(r"^\s*([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", text, re.M):
        found[re.sub(r"[-_.]+", "-", m.group(1).split("[")[0]).lower()] = m.group(2)
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def test_the_parser_reads_continuations_and_stages():
    steps = instructions("FROM a AS b\n# c\nRUN x \\\n    && y\nFROM b\nUSER 1\n")
    assert steps == [("FROM", "a AS b"), ("RUN", "x && y"), ("FROM", "b"), ("USER", "1")]
    assert [len(s) for s in stages(steps)] == [2, 2]
    assert pins("torch==2.13.0\nfoo_bar[x]==1.2 ; python_version>'3'\n# a==1\n") == {
        "torch": "2.13.0",
        "foo-bar": "1.2",
    }


def test_installs_with_the_tests_constraints_and_no_other_pin(dockerfile):
    constraints = pins((ROOT / "constraints.txt").read_text())
    assert constraints["torch"] == "2.13.0"
    runs = " ".join(args for word, args in dockerfile if word == "RUN")
    installs = [cmd for cmd in re.split(r"&&|;", runs) if "pip install" in cmd]
    project = [cmd for cmd in installs if re.search(r"\s\.(\s|$)", cmd)]
    assert project, "the Dockerfile never installs the project"
    for cmd in project:
        assert "-c constraints.txt" in cmd, cmd
    copied = " ".join(args for word, args in dockerfile if word == "COPY")
    assert "constraints.txt" in copied
    # Any version written into the Dockerfile itself must be the tested one.
    for name, version in pins("\n".join(re.findall(r"(\S+==\S+)", runs))).items():
        assert constraints.get(name) == version, f"Dockerfile pins {name}=={version}"
    assert "grep -v" not in runs, "the image must not drop pins from constraints.txt"


def test_multi_stage_non_root_and_base_by_digest(dockerfile):
    parts = stages(dockerfile)
    assert len(parts) >= 2
    args = {a.split("=")[0]: a for word, a in dockerfile if word == "ARG"}
    assert "=" not in args["BASE_DIGEST"], "the digest must be given at build time"
    python = re.search(r"python:(\d+\.\d+)", args["BASE_IMAGE"]).group(1)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={python}"
    for stage in parts:
        assert stage[0][1].split()[0] == "${BASE_IMAGE}@${BASE_DIGEST}"
    final = parts[-1]
    users = [a for word, a in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any(word == "COPY" and a.startswith("--from=") for word, a in final)


def test_every_package_of_the_distribution_is_copied(dockerfile):
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    build = stages(dockerfile)[0]
    copied = {a.split()[0].rstrip("/") for word, a in build if word == "COPY"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_data_and_local_state_stay_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "feature_repo/data", "artifacts", "local_outputs"} <= ignored
