"""convert --platform / --all on a multi-platform source (skopeo's --multi-arch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testdata"))
import make_sample as ms  # noqa: E402

from converter.convert import ConvertOptions, convert_refs  # noqa: E402
from converter.errors import BadInputError  # noqa: E402


def _two_platforms(tmp_path: Path) -> Path:
    shared = ms.sample_layers()[0]
    amd = ms.make_image([shared, ms.make_tar([ms.Entry("amd64.txt", data=b"x86\n" * 100)])], "amd64", False)
    arm = ms.make_image(
        [shared, ms.make_tar([ms.Entry("arm64.txt", data=b"arm\n" * 100)])], "arm64", False, variant="v8"
    )
    index = ms.make_index([amd, arm], False)
    src = tmp_path / "src"
    ms.write_layout(str(src), [*amd.blobs(), *arm.blobs(), index], [("multi", index)])
    return src


def _top(layout: Path) -> dict:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return entry


def _blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())


def test_platform_picks_one_instance_written_as_a_manifest(tmp_path):
    src = _two_platforms(tmp_path)
    convert_refs(f"oci:{src}:multi", f"oci:{tmp_path / 'all'}:multi")
    index = _blob(tmp_path / "all", _top(tmp_path / "all")["digest"])
    arm_in_index = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")

    report = convert_refs(f"oci:{src}:multi", f"oci:{tmp_path / 'arm'}:multi", ConvertOptions(platform="linux/arm64"))
    top = _top(tmp_path / "arm")
    assert top["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert top["digest"] == arm_in_index["digest"]  # the same instance the full conversion made
    assert len(report.layers) == 2

    with pytest.raises(BadInputError, match=r"no image for linux/s390x \(it has: linux/amd64, linux/arm64/v8\)"):
        convert_refs(f"oci:{src}:multi", f"oci:{tmp_path / 'none'}:multi", ConvertOptions(platform="linux/s390x"))
    assert not (tmp_path / "none" / "index.json").exists()


def _zconv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converter.cli", *args], capture_output=True, text=True)


def test_cli_platform_and_all(tmp_path):
    src = _two_platforms(tmp_path)
    p = _zconv("convert", "-q", "--all", f"oci:{src}:multi", f"oci:{tmp_path / 'all'}:multi")
    assert p.returncode == 0, p.stderr
    assert _top(tmp_path / "all")["mediaType"] == "application/vnd.oci.image.index.v1+json"
    p = _zconv("convert", "-q", "--platform", "linux/amd64", f"oci:{src}:multi", f"oci:{tmp_path / 'amd'}:multi")
    assert p.returncode == 0, p.stderr
    assert _top(tmp_path / "amd")["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    for bad, msg in (
        (["--platform", "linux"], "expected OS/ARCH"),
        (["--platform", "linux/amd64", "--all"], "exclude"),
    ):
        p = _zconv("convert", *bad, f"oci:{src}:multi", f"oci:{tmp_path / 'x'}:multi")
        assert p.returncode == 64 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
