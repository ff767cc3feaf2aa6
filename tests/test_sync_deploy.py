"""The shipped Kubernetes Indexed Job and CI matrix, run for real.

The Job's container command, args and environment are taken from
deploy/kubernetes/sync-job.yaml; N pods become N local processes with
JOB_COMPLETION_INDEX=0..N-1, against a real registry with authentication,
credentials read from the auth file where the Secret would be mounted. Only
the addresses the YAML cannot know (registry host, file paths) are replaced.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import yaml
from test_sync import ROOT, isolated_auth, layer_tar, make_image  # noqa: F401  (fixture)

from converter.image.model import TransportOptions
from converter.push import push_image
from support.registry import RegistryServer

JOB_YAML = ROOT / "deploy" / "kubernetes" / "sync-job.yaml"
GITHUB_MATRIX = ROOT / "examples" / "ci" / "sync-matrix.github.yml"
EXAMPLE_HOST = "registry.example.com"


def load_job() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(JOB_YAML.read_text()))
    job = next(d for d in docs if d and d["kind"] == "Job")
    cm = next(d for d in docs if d and d["kind"] == "ConfigMap")
    return job, cm


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def test_job_yaml_is_consistent():
    job, cm = load_job()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["ZCONV_SHARDS"]) == spec["completions"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the auth file and the sources file are where the volumes put them
    auth_vol = volumes[next(n for n, p in mounts.items() if env["REGISTRY_AUTH_FILE"].startswith(p + "/"))]
    assert auth_vol["secret"]["items"][0]["path"] == os.path.basename(env["REGISTRY_AUTH_FILE"])
    src_vol = volumes[next(n for n, p in mounts.items() if env["ZCONV_SYNC_SOURCE"].startswith(p + "/"))]
    assert src_vol["configMap"]["name"] == cm["metadata"]["name"]
    assert os.path.basename(env["ZCONV_SYNC_SOURCE"]) in cm["data"]


def test_indexed_job_shards_are_disjoint_and_complete(tmp_path):
    job, cm = load_job()
    spec = job["spec"]
    (c,) = spec["template"]["spec"]["containers"]
    n = spec["completions"]
    with RegistryServer(auth=("syncer", "pw")) as reg:
        creds = TransportOptions(creds="syncer:pw")
        base = layer_tar("base", 1)
        layout = tmp_path / "src"
        pushed = {
            "team/app": ["1.0", "1.1", "latest"],
            "team/api": ["v1.0", "v1.1", "v2.0", "dev"],
            "team/web": ["1.9.0", "2.0.1", "v2.1.0", "2.2.0-rc.1", "latest"],
        }
        for repo, tags in pushed.items():
            for i, tag in enumerate(tags):
                make_image(layout, tag, [base, layer_tar(f"{repo}-{tag}", 50 + i, files=2, size=3000)])
                push_image(
                    f"oci:{layout}:{tag}",
                    f"docker://{reg.host}/{repo}:{tag}",
                    options=creds,
                    check_ranges=False,
                    warn=lambda m: None,
                )
        expected = (
            {f"docker://{reg.host}/team/app:{t}" for t in pushed["team/app"]}
            | {f"docker://{reg.host}/team/api:{t}" for t in ("v1.0", "v1.1", "v2.0")}  # the ConfigMap's regex
            | {f"docker://{reg.host}/team/web:{t}" for t in ("2.0.1", "v2.1.0")}  # and its semver constraint
        )

        # What the volumes would hold, at local paths.
        sources = tmp_path / "sync.yaml"
        name = os.path.basename(next(e["value"] for e in c["env"] if e["name"] == "ZCONV_SYNC_SOURCE"))
        sources.write_text(cm["data"][name].replace(EXAMPLE_HOST, reg.host))
        auth = tmp_path / "secret" / "auth.json"
        auth.parent.mkdir()
        auth.write_text(json.dumps({"auths": {reg.host: {"auth": base64.b64encode(b"syncer:pw").decode()}}}))

        local = {
            "ZCONV_SYNC_SOURCE": str(sources),
            "REGISTRY_AUTH_FILE": str(auth),
            "ZCONV_SYNC_DEST": f"docker://{reg.host}/zstd",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
        }
        procs = []
        for index in range(n):
            env = {
                **os.environ,
                **{e["name"]: e["value"] for e in c["env"]},
                **local,
                "JOB_COMPLETION_INDEX": str(index),
            }
            env.pop("ZCONV_SHARD", None)
            argv = [expand(a, env) for a in c["command"] + c["args"]]
            assert argv[0] == "zconv"
            argv = [sys.executable, "-c", "import sys; from converter.cli import main; sys.exit(main())", *argv[1:]]
            procs.append(
                subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        outs = [p.communicate(timeout=600) for p in procs]
        per_shard: list[set[str]] = []
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            recs = [json.loads(line) for line in out.splitlines()]
            assert all(r["action"] == "converted" for r in recs), recs
            per_shard.append({r["source"] for r in recs})
        union = set().union(*per_shard)
        assert sum(len(s) for s in per_shard) == len(union), per_shard  # disjoint
        assert union == expected  # complete
        assert sum(1 for s in per_shard if s) > 1  # really spread over pods


def test_github_matrix_example_names_every_shard():
    doc = yaml.safe_load(GITHUB_MATRIX.read_text())
    job = doc["jobs"]["sync"]
    shards = job["strategy"]["matrix"]["shard"]
    run = next(s["run"] for s in job["steps"] if "zconv sync" in s.get("run", ""))
    n = int(re.search(r"--shard \$\{\{ matrix.shard \}\}/(\d+)", run).group(1))
    assert shards == list(range(n))
