"""`zconv convert --summary FILE`: a Markdown report for CI step summaries.

GitHub's `$GITHUB_STEP_SUMMARY` (and GitLab/Tekton pages that render
Markdown) show it on the run's page: a one-line headline, the images
written, and per layer the old and new size, whether it is zstd:chunked (or
why not) and the time it took. With an estimate against the previous tag
(converter/estimate.py, the consumer's own decisions replayed on the TOCs) it
also says how many bytes a client that has that tag fetches, per layer and
in total.

The text is appended to FILE, as CI summary files expect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from converter.image.model import short
from converter.progress import human

if TYPE_CHECKING:
    from converter.convert import ConvertReport
    from converter.estimate import Estimate


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(new: int, old: int) -> str:
    return f"{100.0 * new / old:.0f}%" if old else "-"


def render_summary(
    report: ConvertReport,
    src: str,
    dst: str,
    seconds: float,
    estimate: Estimate | None = None,
    estimate_ref: str | None = None,
) -> str:
    layers = report.layers
    firsts = [r for r in layers if r.action != "reused"]  # each distinct input layer once
    old = sum(r.old_size for r in firsts)
    new = sum(r.new_size for r in firsts)
    chunked = sum(1 for r in firsts if r.chunked)
    head = (
        f"**zconv**: `{_cell(src)}` → `{_cell(dst)}`: {len(firsts)} layer(s), {human(old)} → {human(new)} "
        f"({_pct(new, old)}), {chunked} of {len(firsts)} zstd:chunked, {seconds:.1f} s"
    )
    fetch_by_digest = {}
    if estimate is not None:
        total = estimate.total()
        fetch_by_digest = {x.digest: x for x in estimate.layers}
        head += (
            f"; a client with `{_cell(estimate_ref or ', '.join(estimate.old))}` fetches "
            f"{human(total['fetch_bytes'])} of {human(total['blob_bytes'])}"
        )
    out = [f"### {head}", ""]

    out += ["| image | digest |", "| --- | --- |"]
    for img in report.images:
        out.append(f"| {_cell(img.tag if img.tag is not None else '(untagged)')} | `{img.digest}` |")
    out.append("")

    cols = ["layer", "new digest", "old", "new", "new/old", "zstd:chunked", "time"]
    if estimate is not None:
        cols.append("client fetches")
    out += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in layers:
        if r.chunked:
            state = "yes" if r.action != "kept" else "yes (already)"
        elif r.action == "foreign":
            state = "no: non-distributable layer kept as is"
        else:
            state = "no: " + (r.reason or "written as plain zstd")
        row = [
            r.image,
            f"`{short(r.new_digest)}`",
            human(r.old_size),
            human(r.new_size),
            _pct(r.new_size, r.old_size),
            state,
            f"{r.seconds:.2f} s" if r.action != "reused" else "(same as above)",
        ]
        if estimate is not None:
            est = fetch_by_digest.get(r.new_digest)
            if est is None:
                row.append("-")
            elif est.mode == "reused":
                row.append("nothing (has it)")
            elif est.mode == "full":
                row.append(f"{human(est.fetch_bytes)} (whole layer)")
            else:
                row.append(f"{human(est.fetch_bytes)} ({est.skipped_percent}% of file bytes found)")
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out.append("")
    return "\n".join(out) + "\n"


def append_summary(path: str, text: str) -> None:
    """Append to FILE (CI summary files collect several steps' reports)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
