"""The CI recipes in examples/ci/ cannot rot: their zconv lines run here.

Each recipe is read as YAML; the shell of its steps (GitHub `run`, GitLab
`before_script`/`script`, Tekton `script`) is split into commands and every
command that starts with `zconv` (or `podman unshare zconv`, run without
the unshare: the tests run as root) is run with bash, with the recipe's own
variables (GitHub/GitLab env, Tekton `$(params...)`) filled in and the CI's
values pointed at a private podman store (built here with podman, under the
tag the recipe converts) and the local registry. What they push must be a
zstd:chunked image of what was built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from converter.chunked.format import is_chunked
from converter.image.model import parse_manifest_or_index
from converter.image.refs import open_source
from support.podstore import build_app

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "examples" / "ci"
VENV_BIN = Path(sys.executable).parent
# The post-build recipes (examples/ci/sync-matrix.* are zconv sync's, tested with sync).
RECIPES = ("github-actions.yml", "gitlab-ci.yml", "tekton-task.yaml")


def _scripts(recipe: str, doc: dict) -> tuple[dict[str, str], list[str]]:
    """(the recipe's variables, its shell scripts)."""
    if recipe == "github-actions.yml":
        env = dict(doc.get("env") or {})
        scripts = []
        for job in doc["jobs"].values():
            env.update(job.get("env") or {})
            for step in job["steps"]:
                if "run" in step:
                    env.update(step.get("env") or {})
                    scripts.append(step["run"])
        return {k: str(v) for k, v in env.items()}, scripts
    if recipe == "gitlab-ci.yml":
        env = dict(doc.get("variables") or {})
        scripts = []
        for job in doc.values():
            if isinstance(job, dict) and "script" in job:
                env.update(job.get("variables") or {})
                scripts += list(job.get("before_script") or []) + list(job["script"])
        return {k: str(v) for k, v in env.items()}, scripts
    assert doc["kind"] == "Task"
    spec = doc["spec"]
    env = {e["name"]: str(e["value"]) for e in spec.get("stepTemplate", {}).get("env", [])}
    scripts = []
    for step in spec["steps"]:
        env.update({e["name"]: str(e["value"]) for e in step.get("env") or []})
        scripts.append(step["script"])
    return env, scripts


def zconv_lines(scripts: list[str]) -> list[str]:
    out = []
    for script in scripts:
        for line in script.replace("\\\n", " ").splitlines():
            line = line.strip()
            if re.match(r"^(podman unshare\s+)?zconv(\s|$)", line):
                out.append(line)
    return out


def _fill(text: str, values: dict[str, str]) -> str:
    """GitHub ${{ expr }} and Tekton $(params.X)/$(workspaces...) placeholders; shell $VARS stay for bash."""

    def sub(m: re.Match) -> str:
        key = m.group(1).strip()
        if key not in values:
            raise AssertionError(f"the test has no value for {m.group(0)}")
        return values[key]

    text = re.sub(r"\$\{\{(.*?)\}\}", sub, text)
    return re.sub(r"\$\(((?:params|workspaces|results)\.[A-Za-z0-9_.-]+)\)", sub, text)


@pytest.fixture(scope="module")
def ci_stores(tmp_path_factory):
    from support.podstore import make_store

    work = tmp_path_factory.mktemp("ci")
    overlay = make_store(work / "overlay", "overlay")
    (work / "o").mkdir()
    build_app(overlay, work / "o", "localhost/app:t-gh")
    vfs = make_store(work / "vfs", "vfs")
    (work / "v").mkdir()
    build_app(vfs, work / "v", "localhost/app:build")
    vfs.podman("tag", "localhost/app:build", "localhost/app:abc1234")
    return {"overlay": overlay, "vfs": vfs, "work": work}


def _cases(registry, tmp: Path) -> dict[str, dict]:
    host = registry.host
    return {
        "github-actions.yml": {
            "store": "overlay",
            "fill": {},
            "env": {
                "IMAGE": f"{host}/ci/github",
                "TAG": "t-gh",
                "REGISTRY_USER": "ci",
                "REGISTRY_PASSWORD": "pw",
                "ZCONV_CACHE_DIR": str(tmp / "cache"),
                "GITHUB_STEP_SUMMARY": str(tmp / "step-summary.md"),
            },
            "dest": f"docker://{host}/ci/github:t-gh",
        },
        "gitlab-ci.yml": {
            "store": "vfs",
            "fill": {},
            "env": {
                "CI_COMMIT_SHORT_SHA": "abc1234",
                "CI_PROJECT_DIR": str(tmp),
                "CI_REGISTRY_USER": "ci",
                "CI_REGISTRY_PASSWORD": "pw",
                "CI_REGISTRY_IMAGE": f"{host}/ci/gitlab",
            },
            "dest": f"docker://{host}/ci/gitlab:abc1234",
        },
        "tekton-task.yaml": {
            "store": "vfs",
            "fill": {
                "params.IMAGE": f"{host}/ci/tekton:1",
                "params.TLS_VERIFY": "false",
                "params.CONTEXT": ".",
                "params.ZCONV_IMAGE": "unused",
                "workspaces.cache.path": str(tmp / "cache"),
                "workspaces.source.path": str(tmp),
                "workspaces.dockerconfig.bound": "false",
                "workspaces.dockerconfig.path": "",
                "results.IMAGE_DIGEST.path": str(tmp / "digest"),
            },
            "env": {"AUTH": ""},
            "dest": f"docker://{host}/ci/tekton:1",
        },
    }


def _expand(env: dict[str, str], ci: dict[str, str]) -> dict[str, str]:
    """Recipe variables may refer to the CI's own ($CI_COMMIT_SHORT_SHA): expand them as the CI does."""
    out = dict(ci)
    for k, v in env.items():
        if k in ci:
            continue  # the test's value stands in for the CI's
        out[k] = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: out.get(m.group(1), m.group(0)), v)
    return out


def test_every_recipe_has_zconv_lines_and_a_cache():
    for path in (CI / name for name in RECIPES):
        doc = yaml.safe_load(path.read_text())
        env, scripts = _scripts(path.name, doc)
        lines = zconv_lines(scripts)
        assert any("containers-storage:" in line and "docker://" in line for line in lines), path.name
        assert "ZCONV_CACHE_DIR" in env, f"{path.name}: the cache dir is not set"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_zconv_lines_run_against_the_local_registry(recipe, ci_stores, registry, tmp_path):
    case = _cases(registry, tmp_path)[recipe]
    doc = yaml.safe_load((CI / recipe).read_text())
    env, scripts = _scripts(recipe, doc)
    lines = zconv_lines(scripts)
    assert lines, f"{recipe}: no zconv command found"
    st = ci_stores[case["store"]]
    run_env = {
        **os.environ,
        **_expand({k: _fill(v, case["fill"]) for k, v in env.items() if k not in case["env"]}, case["env"]),
        "CONTAINERS_STORAGE_CONF": str(st.conf),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    for line in lines:
        # `podman unshare` enters a rootless user's namespace; the tests run as root, where it refuses to.
        cmd = _fill(re.sub(r"^podman unshare\s+", "", line), case["fill"])
        p = subprocess.run(
            ["bash", "-euc", cmd], env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, f"{recipe}: {cmd}\n{p.stderr[-3000:]}"
    with open_source(case["dest"]) as src:
        ((_, desc),) = src.targets()
        manifest = parse_manifest_or_index(src.get_manifest(desc))
    assert manifest.config.digest == "sha256:" + st.image_id(
        "localhost/app:build" if case["store"] == "vfs" else "localhost/app:t-gh"
    )
    assert manifest.layers and all(is_chunked(layer) for layer in manifest.layers)
    if recipe == "github-actions.yml":
        assert (tmp_path / "image-digest").read_text() == desc.digest + "\n"
        assert (tmp_path / "step-summary.md").read_text().startswith("### **zconv**: ")
    if recipe == "tekton-task.yaml":
        report = json.loads((tmp_path / "zconv-report.json").read_text())
        assert report["images"][0]["digest"] == desc.digest
