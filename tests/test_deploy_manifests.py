"""The compose file and the Kubernetes manifests, checked by their own tools.

Every check runs offline: no Docker daemon, no cluster, no schema download.

- ``deploy/compose.yaml`` against the Compose Specification's JSON schema
  that ``check-jsonschema`` ships (``--builtin-schema vendor.compose-spec``,
  a current copy of the schema Docker Compose v2 validates with);
- the same file resolved by ``docker-compose config`` (Debian's
  ``docker-compose`` 1.29): variables filled in and converted to their
  types, anchors merged, references between services, secrets and volumes
  checked. The schema cannot do this part: it lets any string through where
  a variable may stand (``replicas: ${AV_WEB_REPLICAS:-2}``);
- ``deploy/k8s`` rendered by ``kubectl kustomize`` (the ``kubectl`` on the
  machine, or Debian's ``kubernetes-client``), and every object, plus the
  secret template that the kustomization leaves out on purpose, checked by
  ``kubernetes-validate --strict`` against the OpenAPI schemas of the
  Kubernetes releases in ``KUBERNETES_VERSIONS`` (unknown fields refused,
  and a kind or ``apiVersion`` without a schema counts as a failure);
- each validator is also handed a deliberately broken copy and must refuse
  it, so that none of these tests can pass by checking nothing.

Docker Compose v2 itself is not packaged for this Debian release. Its 1.29
predecessor knows every key of our file except the top-level ``name``, so
its copy leaves that line out; the schema check covers ``name``. Deleting
``name`` from the file instead would not be equally correct for v2: the
project would be named after the folder (``deploy``), which renames the
``pgdata`` volume of an existing install. A future key that 1.29 does not
know gets the same treatment as ``name`` in ``_for_docker_compose_1``.

The tools install with ``make setup`` (``check-jsonschema``,
``kubernetes-validate``) and ``apt-get install docker-compose
kubernetes-client`` (``.ci/run`` does it); a test whose tool is missing
skips and says which package brings it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

# The oldest and the newest minor release that upstream still supports and
# that kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")

DOCKER_COMPOSE = shutil.which("docker-compose")
KUBECTL = shutil.which("kubectl")

needs_check_jsonschema = pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema is not installed (make setup)",
)
needs_docker_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (apt-get install docker-compose)",
)
needs_kubernetes_validate = pytest.mark.skipif(
    importlib.util.find_spec("kubernetes_validate") is None,
    reason="kubernetes-validate is not installed (make setup)",
)
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed (apt-get install kubernetes-client)",
)


def _run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=60, **options
    )


def _broken(text: str, old: str, new: str) -> str:
    """Return ``text`` with its only ``old`` replaced by ``new``.

    Fails when ``old`` is not there exactly once, so that a negative test
    notices when the file it breaks has changed under it.
    """
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


# --- Compose: the Compose Specification schema --------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate a compose file against the schema check-jsonschema ships."""
    return _run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ]
    )


@needs_check_jsonschema
def test_the_compose_file_matches_the_compose_specification() -> None:
    checked = check_compose_schema(COMPOSE)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validation done" in checked.stdout


@needs_check_jsonschema
@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("    expose:\n", "    exposes:\n", "'exposes' was unexpected"),
        ("      retries: 3\n", "      retries: [3]\n", "is not of type"),
    ],
    ids=["unknown-key", "wrong-type"],
)
def test_the_compose_schema_check_refuses_a_broken_file(
    tmp_path: Path, old: str, new: str, error: str
) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(_broken(COMPOSE.read_text(), old, new))

    checked = check_compose_schema(broken)

    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert error in checked.stdout


# --- Compose: docker-compose config -------------------------------------------


def _for_docker_compose_1(text: str) -> str:
    """Return the compose file without what docker-compose 1.29 predates."""
    text, count = re.subn(r"(?m)^name: .*\n", "", text)
    assert count == 1, "the top-level name of the project is gone"
    return text


def docker_compose_config(
    root: Path, text: str, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Resolve ``text`` as ``deploy/compose.yaml`` of a scratch checkout.

    ``deploy/secrets/make-secrets.sh`` writes the secret and env files the
    compose file names; ``config`` only needs them to exist, so empty ones
    stand in. The environment is cleared to keep the defaults of the file.
    """
    folder = root / "deploy"
    (folder / "secrets").mkdir(parents=True)
    compose = folder / "compose.yaml"
    compose.write_text(text)

    loaded = yaml.safe_load(text)
    needed = [secret["file"] for secret in loaded.get("secrets", {}).values()]
    for service in loaded["services"].values():
        needed += service.get("env_file", [])
    for name in needed:
        (folder / name).touch()

    assert DOCKER_COMPOSE is not None
    return _run(
        [DOCKER_COMPOSE, "-f", str(compose), "config", "-q"],
        cwd=folder,
        env={"PATH": os.environ["PATH"], "HOME": str(root), **(env or {})},
    )


@needs_docker_compose
def test_docker_compose_resolves_the_compose_file(tmp_path: Path) -> None:
    text = _for_docker_compose_1(COMPOSE.read_text())

    resolved = docker_compose_config(tmp_path, text)

    assert resolved.returncode == 0, resolved.stderr


@needs_docker_compose
@pytest.mark.parametrize(
    ("old", "new", "env", "error"),
    [
        (
            "      redis:\n        condition",
            "      cache:\n        condition",
            {},
            "depends on service 'cache' which is undefined",
        ),
        ("", "", {"AV_WEB_REPLICAS": "two"}, '"two" is not a valid integer'),
    ],
    ids=["undefined-service", "variable-of-wrong-type"],
)
def test_docker_compose_refuses_a_broken_file(
    tmp_path: Path, old: str, new: str, env: dict[str, str], error: str
) -> None:
    text = _for_docker_compose_1(COMPOSE.read_text())
    if old:
        text = _broken(text, old, new)

    resolved = docker_compose_config(tmp_path, text, env=env)

    assert resolved.returncode != 0
    assert error in resolved.stderr


# --- Kubernetes ---------------------------------------------------------------


def kubernetes_problems(path: Path, version: str) -> str:
    """Return what ``kubernetes-validate --strict`` reports about ``path``.

    Quiet, it prints failures and warnings only. An object whose kind and
    ``apiVersion`` have no schema (a typo, or an API that release removed)
    is only a warning and exits 0, so any output counts as a problem.
    """
    checked = _run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "--kubernetes-version",
            version,
            str(path),
        ]
    )
    report = (checked.stdout + checked.stderr).strip()
    if checked.returncode != 0 and not report:
        report = f"exit status {checked.returncode}"
    return report


def _objects(text: str) -> list[tuple[str, str]]:
    return sorted(
        (item["kind"], item["metadata"]["name"])
        for item in yaml.safe_load_all(text)
        if item
    )


@needs_kubectl
@needs_kubernetes_validate
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_rendered_kubernetes_manifests_validate(
    tmp_path: Path, version: str
) -> None:
    assert KUBECTL is not None
    rendered = _run([KUBECTL, "kustomize", str(K8S)])
    assert rendered.returncode == 0, rendered.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered.stdout)

    assert kubernetes_problems(path, version) == ""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = "".join(
        "---\n" + (K8S / name).read_text() for name in kustomization["resources"]
    )
    assert _objects(rendered.stdout) == _objects(listed)


@needs_kubernetes_validate
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_secret_template_validates(version: str) -> None:
    """The secret template validates and stays out of the kustomization.

    Real secrets are made with ``kubectl create secret``, never applied from
    the repository.
    """
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]

    assert kubernetes_problems(K8S / "secret.example.yaml", version) == ""
    assert _objects((K8S / "secret.example.yaml").read_text()) == [
        ("Secret", "agentvault-migrate"),
        ("Secret", "agentvault-secrets"),
    ]


@needs_kubernetes_validate
@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecond:",
            "'terminationGracePeriodSecond' was unexpected",
        ),
        ("replicas: 3", 'replicas: "3"', "'3' is not of type 'integer'"),
        (
            "apiVersion: policy/v1\n",
            "apiVersion: policy/v1beta1\n",
            "Couldn't find schema for kind PodDisruptionBudget",
        ),
    ],
    ids=["unknown-field", "wrong-type", "removed-api"],
)
def test_kubernetes_validate_refuses_a_broken_manifest(
    tmp_path: Path, old: str, new: str, error: str
) -> None:
    broken = tmp_path / "web.yaml"
    broken.write_text(_broken((K8S / "web.yaml").read_text(), old, new))

    problems = kubernetes_problems(broken, KUBERNETES_VERSIONS[-1])

    assert error in problems
