"""Hostile local inputs (issue 9): crafted layouts and archives, concurrent and killed runs.

Every case goes through the CLI entry (`converter.cli.main`) as a user would
run it and checks what the user sees: the exit code, one error line naming
what and where, no traceback, and a destination left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "testdata" / "sample"

from converter.cli import main  # noqa: E402
from converter.errors import BadInputError  # noqa: E402
from converter.jsonload import load_json, nesting_depth  # noqa: E402


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(capsys, *argv: str) -> tuple[int, str]:
    """zconv ARGV in-process; returns (exit code, stderr). Fails on a traceback."""
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("zconv: error:")]
    assert len(lines) == 1, err
    return lines[0]


def copy_sample(tmp_path: Path, name: str = "src") -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst)
    return dst


def index_entry(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_bytes())["manifests"][0]


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def put_blob(layout: Path, data: bytes) -> str:
    d = sha(data)
    blob_path(layout, d).write_bytes(data)
    return d


def replace_manifest(layout: Path, edit) -> None:
    """Rewrite the sample's manifest with `edit(doc)` (or raw bytes from it) and point index.json at it."""
    entry = index_entry(layout)
    doc = json.loads(blob_path(layout, entry["digest"]).read_bytes())
    new = edit(doc)
    data = new if isinstance(new, bytes) else json.dumps(doc).encode()
    entry = dict(entry, digest=put_blob(layout, data), size=len(data))
    write_index(layout, [entry])


def write_index(layout: Path, entries: list, raw: bytes | None = None) -> None:
    (layout / "index.json").write_bytes(
        raw if raw is not None else json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    )


def convert_fails(capsys, tmp_path: Path, src: Path, code: int = 2, match: str = "") -> str:
    dst = tmp_path / "out"
    rc, err = run(capsys, "convert", "-q", f"oci:{src}", f"oci:{dst}")
    line = one_error_line(err)
    assert rc == code, err
    assert match in line, line
    assert not dst.exists()
    return line


# ------------------------------------------------------------------ JSON


def test_loader_limits_are_one_line_errors():
    for data, what in [
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b"NaN", "not valid JSON"),
        (b"[1e999]", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"1" * 5000, "too many digits"),
        (b"{nope", "not valid JSON"),
    ]:
        with pytest.raises(BadInputError, match=what) as ei:
            load_json(data, "here")
        assert str(ei.value).startswith("here: ") and "\n" not in str(ei.value)
    with pytest.raises(BadInputError, match="larger than 10 bytes"):
        load_json(b"[" + b"1," * 20 + b"1]", "here", max_size=10)
    # Valid pairs, escaped backslashes and brackets inside strings are fine.
    assert load_json(b'{"a": "\\ud83d\\ude00", "b": "\\\\ud800", "c": "[[[[{{{{"}', "x") == {
        "a": "\U0001F600", "b": "\\ud800", "c": "[[[[{{{{"}
    assert nesting_depth(b'[[["]]]]]]"]]]') == 3
    assert load_json(b"[" * 64 + b"]" * 64, "x") is not None


def test_deeply_nested_index_json(capsys, tmp_path):
    src = copy_sample(tmp_path)
    write_index(src, [], raw=b'{"schemaVersion": 2, "manifests": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    convert_fails(capsys, tmp_path, src, match="index.json: JSON nests deeper than 64")


def test_deeply_nested_manifest(capsys, tmp_path):
    src = copy_sample(tmp_path)
    replace_manifest(src, lambda doc: json.dumps(doc)[:-1].encode() + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    convert_fails(capsys, tmp_path, src, match="nests deeper than 64")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("urls", 5, "'urls' must be a list of strings"),
        ("urls", [1], "'urls' must be a list of strings"),
        ("size", 2**63, "invalid size"),
        ("size", -1, "invalid size"),
        ("size", True, "invalid size"),
        ("size", 1.5, "invalid size"),
        ("annotations", {"a": 1}, "annotations must map strings to strings"),
        ("annotations", "x", "annotations must map strings to strings"),
        ("platform", {"os": 1, "architecture": "amd64"}, "'os' must be a string"),
        ("platform", {"os": "linux", "architecture": "amd64", "features": "sse"}, "'features' must be a list"),
        ("platform", [], "platform is not a JSON object"),
        ("artifactType", {}, "'artifactType' must be a string"),
    ],
)
def test_descriptor_field_types_in_layer(capsys, tmp_path, field, value, match):
    src = copy_sample(tmp_path)

    def edit(doc):
        doc["layers"][0][field] = value

    replace_manifest(src, edit)
    convert_fails(capsys, tmp_path, src, match=match)


@pytest.mark.parametrize("field, value", [("urls", 5), ("size", 2**63), ("platform", {"architecture": ["x"]})])
def test_descriptor_field_types_in_index_json(capsys, tmp_path, field, value):
    src = copy_sample(tmp_path)
    entry = index_entry(src)
    entry[field] = value
    write_index(src, [entry])
    line = convert_fails(capsys, tmp_path, src)
    assert "index.json entry 0" in line


def test_manifest_annotations_and_lone_surrogate(capsys, tmp_path):
    src = copy_sample(tmp_path)
    replace_manifest(src, lambda doc: doc.update(annotations={"a": ["b"]}))
    convert_fails(capsys, tmp_path, src, match="annotations must map strings to strings")
    src2 = copy_sample(tmp_path, "src2")
    replace_manifest(src2, lambda doc: json.dumps(doc)[:-1].encode() + b', "annotations": {"k": "\\udc00"}}')
    convert_fails(capsys, tmp_path, src2, match="lone UTF-16 surrogate")


def test_lone_surrogate_in_index_json_tag(capsys, tmp_path):
    src = copy_sample(tmp_path)
    entry = index_entry(src)
    raw = json.dumps({"schemaVersion": 2, "manifests": [entry]}).replace('"v1"', '"\\ud800"').encode()
    write_index(src, [], raw=raw)
    convert_fails(capsys, tmp_path, src, match="lone UTF-16 surrogate")


def test_config_that_is_not_json(capsys, tmp_path):
    src = copy_sample(tmp_path)
    garbage = put_blob(src, b"\x00not json at all")

    def edit(doc):
        doc["config"]["digest"] = garbage
        doc["config"]["size"] = len(b"\x00not json at all")

    replace_manifest(src, edit)
    convert_fails(capsys, tmp_path, src, match="config")
    src2 = copy_sample(tmp_path, "src2")
    deep = put_blob(src2, b"[" * 10000 + b"]" * 10000)

    def edit2(doc):
        doc["config"]["digest"] = deep
        doc["config"]["size"] = 20000

    replace_manifest(src2, edit2)
    convert_fails(capsys, tmp_path, src2, match="nests deeper than 64")
