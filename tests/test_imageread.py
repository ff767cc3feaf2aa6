"""Choosing an index entry for a platform (imageread.pick_instance), shared by convert, push, inspect and estimate."""

from __future__ import annotations

from converter.image.model import INDEX_ZSTD_ANNOTATION, Descriptor, Platform
from converter.imageread import DOCKER_REFERENCE_TYPE, parse_platform, pick_instance

MT = "application/vnd.oci.image.manifest.v1+json"


def entry(n: int, platform: str | None, **annotations: str) -> Descriptor:
    p = parse_platform(platform) if platform else None
    return Descriptor(MT, "sha256:" + f"{n:064x}", 100 + n, annotations, p)


def test_matching_platform_before_entries_without_one_then_index_order():
    amd, arm, plain = entry(1, "linux/amd64"), entry(2, "linux/arm64"), entry(3, None)
    assert pick_instance([plain, arm, amd], parse_platform("linux/amd64")) is amd
    assert pick_instance([plain, arm], parse_platform("linux/amd64")) is plain
    assert pick_instance([amd, entry(4, "linux/amd64")], parse_platform("linux/amd64")) is amd
    assert pick_instance([arm], parse_platform("linux/amd64")) is None


def test_zstd_instance_preferred_and_attestations_never_chosen():
    gz, zs = entry(1, "linux/amd64"), entry(2, "linux/amd64", **{INDEX_ZSTD_ANNOTATION: "true"})
    assert pick_instance([gz, zs], parse_platform("linux/amd64")) is zs
    att = entry(3, None, **{DOCKER_REFERENCE_TYPE: "attestation-manifest"})
    assert pick_instance([att], parse_platform("linux/amd64")) is None
    assert pick_instance([att, gz], parse_platform("linux/amd64")) is gz


def test_variant_matches_when_asked_or_absent():
    v7, v6, bare = entry(1, "linux/arm/v7"), entry(2, "linux/arm/v6"), entry(3, "linux/arm")
    assert pick_instance([v6, v7], parse_platform("linux/arm/v7")) is v7
    assert pick_instance([bare], parse_platform("linux/arm/v7")) is bare
    assert pick_instance([v6, v7], Platform("linux", "arm", None)) is v6
