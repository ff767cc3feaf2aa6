"""Interop: the real containers/storage must partially pull what zconv writes.

For every image of the corpus (edge-case tars, the Debian pair):
  convert with `zconv convert` -> copy into a real registry (containers/image)
  -> pull into an overlay containers-storage store with partial pulls on, then
  check: every zstd:chunked layer went through the zstd:chunked differ with no
  fallback; image ID == config digest; the pulled files equal the input tar;
  our TOC equals the reference writer's TOC (all fields but offset/endOffset);
  and pulling v2 after v1 needs no more bytes than with the reference writer.

Needs: go + the Go module proxy (first build), /usr/bin/docker-registry,
overlay mounts, root, debootstrap + the Debian mirror (slow tests). A missing
piece fails the tests with the reason; nothing is skipped.

ZCONV_INTEROP_CONVERTER=reference swaps `zconv convert` for the reference
writer: that only checks the harness itself, never use it to judge zconv.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from support.corpus import (
    EXTRA_PACKAGES,
    debian_rootfs_tar,
    edge_case_names,
    edge_case_tars,
    write_oci_image,
)
from support.interop import (
    TOC_CHECKSUM_KEY,
    InteropError,
    InteropTool,
    assert_no_mounts_under,
    blob_path,
    compare_tocs,
    compare_tree_to_tar,
    read_oci_image,
    read_toc,
    reference_convert,
    zconv_convert,
)

pytestmark = pytest.mark.interop

CONVERTER = os.environ.get("ZCONV_INTEROP_CONVERTER", "zconv")


# ---------------------------------------------------------------------------
# helpers


def convert_ours(interop: InteropTool, tars: list[Path], src: Path, dst: Path, tag: str) -> dict:
    """Source image (gzip layers) -> our zstd:chunked image in `dst`. Returns the manifest."""
    write_oci_image(src, tag, tars)
    if CONVERTER == "reference":
        reference_convert(interop, tars, dst, tag, dst.parent)
    else:
        zconv_convert(f"oci:{src}:{tag}", f"oci:{dst}:{tag}")
    manifest, _config = read_oci_image(dst, tag)
    return manifest


def unchunkable_reason(tar: Path) -> str | None:
    """Why a tar cannot be zstd:chunked (the consumer would refuse it), or None."""
    seen = set()
    with tarfile.open(tar, "r:") as tf:
        for ti in tf:
            if ti.type == tarfile.XGLTYPE:
                return "PAX global header"
            if ti.issparse():
                return "sparse file"
            name = ti.name
            while name.startswith("./"):
                name = name[2:]
            name = name.strip("/") or "."
            if name in seen:
                return f"duplicate path {name!r}"
            seen.add(name)
    return None


def unextractable_reason(tar: Path) -> str | None:
    """Why no consumer can extract this tar on Linux (a path component > NAME_MAX)."""
    with tarfile.open(tar, "r:") as tf:
        for ti in tf:
            for part in ti.name.split("/"):
                if len(os.fsencode(part)) > 255:
                    return f"path component of {len(os.fsencode(part))} bytes in {ti.name[:60]!r}..."
    return None


def push_and_pull(interop: InteropTool, registry, layout: Path, tag: str, repo: str, store: Path) -> dict:
    ref = registry.ref(repo, tag)
    interop.copy(f"oci:{layout}:{tag}", f"docker://{ref}")
    log = store.parent / f"{store.name}-{repo}-{tag}.log"
    res = interop.pull(f"docker://{ref}", store, log=log)
    assert_no_mounts_under(store)
    res["log_file"] = str(log)
    return res


def assert_partial_pull(res: dict, manifest: dict, what: str) -> None:
    """Every layer with a TOC went through the zstd:chunked differ, no fallback;
    the image ID is the config digest (so the DiffIDs were verified)."""
    assert [x["digest"] for x in res["layers"]] == [x["digest"] for x in manifest["layers"]], what
    for layer, desc in zip(res["layers"], manifest["layers"]):
        if TOC_CHECKSUM_KEY not in desc.get("annotations", {}):
            continue
        where = f"{what} layer {layer['digest']} (debug log: {res['log_file']})"
        assert not layer["reused"], f"{where}: reused from the store, nothing was tested"
        assert layer["differ"] == "zstd:chunked", (
            f"{where}: zstd:chunked differ not used: {layer.get('differ_error') or layer['differ']!r}"
        )
        assert not layer["fallback"], f"{where}: fell back to a full download: {layer['fallback_reason']}"
        assert layer["partial"], f"{where}: no 'Retrieved partial blob'"
    assert res["image_id"] == manifest["config"]["digest"].split(":", 1)[1], (
        f"{what}: image ID {res['image_id']} != config digest {manifest['config']['digest']}; log: {res['log']}"
    )


def assert_tree_equal(res: dict, tars: list[Path], what: str) -> None:
    for layer, tar in zip(res["layers"], tars):
        assert layer["diff_dir"] and Path(layer["diff_dir"]).is_dir(), f"{what}: no diff dir {layer}"
        diffs = compare_tree_to_tar(layer["diff_dir"], tar)
        assert not diffs, f"{what}: pulled layer differs from {tar}:\n" + "\n".join(diffs)


def assert_toc_matches_reference(
    interop: InteropTool,
    layout: Path,
    manifest: dict,
    tars: list[Path],
    workdir: Path,
    what: str,
    ref_layout: Path | None = None,
    ref_manifest: dict | None = None,
) -> None:
    """Our TOC == the reference writer's for the same tar (compressed now, or taken
    from an already converted reference image)."""
    for i, (desc, tar) in enumerate(zip(manifest["layers"], tars)):
        ann = desc.get("annotations", {})
        ours = read_toc(blob_path(layout, desc["digest"]), ann)
        if ref_manifest is not None:
            rdesc = ref_manifest["layers"][i]
            ref = read_toc(blob_path(ref_layout, rdesc["digest"]), rdesc["annotations"])
        else:
            ref_blob = workdir / f"{tar.name}.ref{i}.zst"
            ref_res = interop.compress(tar, ref_blob)
            ref = read_toc(ref_blob, ref_res["annotations"])
        diffs = compare_tocs(ours, ref)
        assert not diffs, f"{what} layer {i}: our TOC differs from the reference:\n" + "\n".join(diffs)


# ---------------------------------------------------------------------------
# edge cases (writer's tests/support/tarcases.py + our own)


def _repo_name(case: str) -> str:
    return "edge-" + re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")


@pytest.fixture(scope="module")
def edge_tars(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edge")
    out = {}
    for name, data in edge_case_tars(d / "build").items():
        p = d / f"{name}.tar"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("case", edge_case_names())
def test_edge_case_partial_pull(case, edge_tars, interop, registry, tmp_path):
    tar = edge_tars[case]
    manifest = convert_ours(interop, [tar], tmp_path / "src", tmp_path / "ours", "v1")
    desc = manifest["layers"][0]
    reason = unchunkable_reason(tar)
    if reason is None:
        assert TOC_CHECKSUM_KEY in desc.get("annotations", {}), (
            f"{case}: zconv did not write zstd:chunked for a chunkable tar: {desc}"
        )
    else:
        assert TOC_CHECKSUM_KEY not in desc.get("annotations", {}), (
            f"{case}: zconv wrote zstd:chunked for a tar the consumer refuses ({reason})"
        )
    if (why := unextractable_reason(tar)) is not None:
        # The consumer cannot extract it at all; it must treat ours as it treats the reference's.
        reference_convert(interop, [tar], tmp_path / "ref", "v1", tmp_path)
        outcome = {}
        for kind in ("ours", "ref"):
            try:
                push_and_pull(
                    interop, registry, tmp_path / kind, "v1", _repo_name(case) + "-" + kind, tmp_path / f"store-{kind}"
                )
                outcome[kind] = "pulled"
            except InteropError as e:
                outcome[kind] = "failed: " + str(e)[-200:]
        assert outcome["ours"].split(":")[0] == outcome["ref"].split(":")[0], (
            f"{case} ({why}): consumer outcome differs: {outcome}"
        )
        assert_toc_matches_reference(interop, tmp_path / "ours", manifest, [tar], tmp_path, case)
        return
    res = push_and_pull(interop, registry, tmp_path / "ours", "v1", _repo_name(case), tmp_path / "store")
    assert_partial_pull(res, manifest, case)
    assert_tree_equal(res, [tar], case)
    if reason is None:
        assert_toc_matches_reference(interop, tmp_path / "ours", manifest, [tar], tmp_path, case)


# ---------------------------------------------------------------------------
# the sample image (testdata/sample, several layers)

SAMPLE = Path(__file__).resolve().parents[1] / "testdata" / "sample"


def test_sample_image_partial_pull(interop, registry, tmp_path):
    assert (SAMPLE / "index.json").exists(), f"{SAMPLE} missing (testdata/make_sample.py builds it)"
    src_manifest, _ = read_oci_image(SAMPLE, "v1")
    tars = []
    for i, desc in enumerate(src_manifest["layers"]):  # the layer tars, for the comparisons
        tar = tmp_path / f"sample-layer{i}.tar"
        with open(blob_path(SAMPLE, desc["digest"]), "rb") as f, open(tar, "wb") as out:
            head = f.read(2)
            f.seek(0)
            shutil.copyfileobj(gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f, out)
        tars.append(tar)
    if CONVERTER == "reference":
        reference_convert(interop, tars, tmp_path / "ours", "v1", tmp_path)
    else:
        zconv_convert(f"oci:{SAMPLE}:v1", f"oci:{tmp_path / 'ours'}:v1")
    manifest, _ = read_oci_image(tmp_path / "ours", "v1")
    assert len(manifest["layers"]) == len(tars) > 1
    for desc in manifest["layers"]:
        assert TOC_CHECKSUM_KEY in desc.get("annotations", {}), f"sample layer not chunked: {desc}"
    res = push_and_pull(interop, registry, tmp_path / "ours", "v1", "sample", tmp_path / "store")
    assert_partial_pull(res, manifest, "sample")
    assert res["image_id"] == src_manifest["config"]["digest"].split(":", 1)[1]
    assert_tree_equal(res, tars, "sample")
    assert_toc_matches_reference(interop, tmp_path / "ours", manifest, tars, tmp_path, "sample")


# ---------------------------------------------------------------------------
# a realistic pair: Debian minbase, then the same with a few more packages


@pytest.fixture(scope="module")
def debian_pair(interop, registry, tmp_path_factory) -> dict:
    """Both versions converted by zconv and by the reference writer, all pushed."""
    work = tmp_path_factory.mktemp("debian")
    tars = {"v1": debian_rootfs_tar(), "v2": debian_rootfs_tar(EXTRA_PACKAGES)}
    out = {"tars": tars, "work": work, "ours": {}, "ref": {}}
    for tag, tar in tars.items():
        out["ours"][tag] = convert_ours(interop, [tar], work / "src", work / "ours", tag)
        reference_convert(interop, [tar], work / "ref", tag, work)
        out["ref"][tag] = read_oci_image(work / "ref", tag)[0]
        for kind in ("ours", "ref"):
            interop.copy(f"oci:{work / kind}:{tag}", f"docker://{registry.ref('debian-' + kind, tag)}")
    return out


def _pull(interop, registry, pair, kind, tag, store) -> dict:
    log = store.parent / f"{store.name}-{kind}-{tag}.log"
    res = interop.pull(f"docker://{registry.ref('debian-' + kind, tag)}", store, log=log)
    assert_no_mounts_under(store)
    res["log_file"] = str(log)
    return res


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_debian_toc_matches_reference(tag, debian_pair, interop, tmp_path):
    manifest = debian_pair["ours"][tag]
    assert TOC_CHECKSUM_KEY in manifest["layers"][0].get("annotations", {}), manifest
    assert_toc_matches_reference(
        interop,
        debian_pair["work"] / "ours",
        manifest,
        [debian_pair["tars"][tag]],
        tmp_path,
        f"debian {tag}",
        ref_layout=debian_pair["work"] / "ref",
        ref_manifest=debian_pair["ref"][tag],
    )


@pytest.mark.slow
def test_debian_v1_then_v2_partial_pull(debian_pair, interop, registry, tmp_path):
    """Both versions pull partially and exactly into one store; v2 reuses v1's files
    at least as well as with the reference writer's conversion."""
    store = tmp_path / "store-ours"
    missing = {}
    for tag in ("v1", "v2"):
        res = _pull(interop, registry, debian_pair, "ours", tag, store)
        assert_partial_pull(res, debian_pair["ours"][tag], f"debian {tag}")
        assert_tree_equal(res, [debian_pair["tars"][tag]], f"debian {tag}")
        missing[tag] = (res["missing_bytes"], res["total_bytes"])

    ref_store = tmp_path / "store-ref"
    ref_missing = {}
    for tag in ("v1", "v2"):
        res = _pull(interop, registry, debian_pair, "ref", tag, ref_store)
        assert_partial_pull(res, debian_pair["ref"][tag], f"reference debian {tag}")
        ref_missing[tag] = (res["missing_bytes"], res["total_bytes"])

    print(
        f"\nmissing bytes (ours / reference): v1 {missing['v1']} / {ref_missing['v1']}, "
        f"v2 after v1 {missing['v2']} / {ref_missing['v2']}"
    )
    assert missing["v2"][0] < missing["v2"][1], f"v2 reused nothing from v1: {missing['v2']}"
    assert missing["v2"][0] <= ref_missing["v2"][0], (
        f"pulling v2 after v1 needs {missing['v2'][0]} bytes with zconv's conversion but only "
        f"{ref_missing['v2'][0]} with the reference writer's"
    )
    for d in (store, ref_store):  # ~1 GB of layers; kept above only when a check failed
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# the Go helper against a registry with basic auth and TLS (as other suites use it)


def test_partial_pull_with_auth_and_tls(edge_tars, interop, tmp_path):
    from support.registry import RegistryServer, make_self_signed_cert

    tar = edge_tars["gnu-tar-tree"]
    manifest = convert_ours(interop, [tar], tmp_path / "src", tmp_path / "ours", "v1")
    cert, key = make_self_signed_cert(tmp_path / "tls")
    certs = tmp_path / "certs.d"  # containers/image: *.crt in the cert dir are CA roots
    certs.mkdir()
    shutil.copy(cert, certs / "ca.crt")
    with RegistryServer(auth=("alice", "s3cret"), tls=(cert, key)) as reg:
        assert reg.url.startswith("https://")
        net = dict(creds="alice:s3cret", cert_dir=certs, tls_verify=True)
        with pytest.raises(InteropError, match="(?i)unauthorized|authentication"):
            interop.copy(
                f"oci:{tmp_path / 'ours'}:v1", f"docker://{reg.ref('private', 'v1')}", cert_dir=certs, tls_verify=True
            )
        interop.copy(f"oci:{tmp_path / 'ours'}:v1", f"docker://{reg.ref('private', 'v1')}", **net)
        store = tmp_path / "store"
        res = interop.pull(f"docker://{reg.ref('private', 'v1')}", store, log=tmp_path / "pull.log", **net)
        assert_no_mounts_under(store)
    res["log_file"] = str(tmp_path / "pull.log")
    assert_partial_pull(res, manifest, "auth+tls")
    assert_tree_equal(res, [tar], "auth+tls")
