"""What `zconv sync` writes is partially pulled by the real consumer (containers/image +
containers/storage through tests/interop), for each kind of destination."""

from __future__ import annotations

import pytest
from test_interop import assert_partial_pull
from test_sync import (  # noqa: F401
    isolated_auth,
    layer_tar,
    make_image,
    manifest_of,
    push,
    records,
    zconv,
)

from support.interop import assert_no_mounts_under, compare_tree_to_tar
from support.registry import RegistryServer

pytestmark = pytest.mark.interop

ZSTD_INSTANCE = "io.github.containers.compression.zstd"


@pytest.mark.parametrize("mode", ["prefix", "suffix", "dual"])
def test_sync_output_is_partially_pulled(mode, interop, tmp_path):
    tars = [layer_tar("base", 1, files=8), layer_tar("app", 2, files=4), layer_tar("top", 3, files=2, size=5000)]
    for i, t in enumerate(tars):
        (tmp_path / f"l{i}.tar").write_bytes(t)
    with RegistryServer() as reg:
        host = reg.host
        make_image(tmp_path / "src", "1.0", tars)
        push(tmp_path / "src", "1.0", f"docker://{host}/app:1.0")
        args = {"prefix": [f"docker://{host}/zstd"], "suffix": ["--suffix", "-zstd"], "dual": ["--dual"]}[mode]
        p = zconv("sync", f"docker://{host}/app", *args, "--json")
        assert p.returncode == 0, p.stderr
        (rec,) = records(p)
        assert rec["action"] == "converted"
        repo_tag = rec["destination"][len(f"docker://{host}/") :]
        repo, tag = repo_tag.rsplit(":", 1)
        doc, _ = manifest_of(host, repo, tag)
        if mode == "dual":
            # The consumer picks an instance of the index: it must be the zstd:chunked one.
            (zstd,) = [m for m in doc["manifests"] if m.get("annotations", {}).get(ZSTD_INSTANCE) == "true"]
            manifest, _ = manifest_of(host, repo, zstd["digest"])
        else:
            manifest = doc
        ref = rec["destination"]  # the tag, as a user pulls it
        store = tmp_path / "store"
        log = tmp_path / "pull.log"
        res = interop.pull(ref, store, log=log)
        assert_no_mounts_under(store)
        res["log_file"] = str(log)
        assert_partial_pull(res, manifest, f"sync --{mode}")
        for layer, i in zip(res["layers"], range(len(tars))):
            diffs = compare_tree_to_tar(layer["diff_dir"], tmp_path / f"l{i}.tar")
            assert not diffs, f"{mode} layer {i}: " + "\n".join(diffs)
