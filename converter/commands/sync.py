"""`zconv sync SRC [DEST]`: convert every tag of repositories, idempotently, in shards.

Argument parsing and printing only; the work is in converter/sync.py.
"""

from __future__ import annotations

import json
import sys

import typer

from converter.cli_app import app
from converter.commands import AUTHFILE_HELP, CERT_DIR_HELP, CREDS_HELP, TIMEOUT_HELP, TLS_HELP, transport_options
from converter.textsafe import printable


@app.command(
    epilog=(
        "Examples:\n\n"
        "  zconv sync docker://registry.example/app docker://registry.example/zstd\n\n"
        "  zconv sync docker://registry.example/app --suffix -zstd --tags '^v[0-9]'\n\n"
        "  zconv sync images.yaml docker://mirror.example/zstd --shard 0/4 --jobs 2 --keep-going --json\n\n"
        "Exit codes as for convert; when images failed, their common exit code (1 if they differ)."
    )
)
def sync(
    source: str = typer.Argument(..., help="docker://HOST/REPO (every tag; REPO:TAG for one) or a YAML file in the "
                                 "shape of `skopeo sync --src yaml` (registry -> images / images-by-tag-regex)."),
    destination: str | None = typer.Argument(None, help="docker://HOST/PREFIX: REPO goes to PREFIX/REPO, tags keep "
                                                "their names. Omit it to write into the source repositories "
                                                "(needs --suffix or --dual)."),
    tags: str | None = typer.Option(None, "--tags", metavar="REGEX", help="Only tags this regular expression "
                                       "matches (searched, as skopeo's regexes: anchor with ^...$)."),
    suffix: str = typer.Option("", "--suffix", help="Destination tag = source tag + SUFFIX (e.g. -zstd); tags already "
                               "ending in SUFFIX are outputs, never sources."),
    dual: bool = typer.Option(False, "--dual", help="Each destination tag becomes an index with the original and the "
                              "zstd:chunked instance (in place when DEST is omitted)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be converted; write nothing."),
    shard: str | None = typer.Option(None, "--shard", metavar="I/N", help="Take shard I of N (from 0) of the "
                                        "(repository, tag) pairs, by a stable hash. Default: $ZCONV_SHARD, or "
                                        "$JOB_COMPLETION_INDEX of $ZCONV_SHARDS in a Kubernetes Indexed Job."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="Images converted at the same time."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Carry on past a failed image; exit non-zero at the end."),
    level: int | None = typer.Option(None, "--level", "-l", min=1, max=22, help="zstd level (as convert)."),
    threads: int = typer.Option(0, "--threads", "-t", min=0, help="Frames compressed in parallel per image; 0 = one per CPU."),
    strict: bool = typer.Option(False, "--strict", help="Fail an image whose layer cannot be zstd:chunked."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line per (repository, tag): source, "
                                  "destination, source_digest, destination_digest, action, reason, bytes_uploaded, seconds."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; errors only."),
    creds: str | None = typer.Option(None, "--creds", help=CREDS_HELP, metavar="USER:PASS"),
    src_creds: str | None = typer.Option(None, "--src-creds", help="USER:PASS for the source registry.", metavar="USER:PASS"),
    dest_creds: str | None = typer.Option(None, "--dest-creds", help="USER:PASS for the destination registry.", metavar="USER:PASS"),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str | None = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    authfile: str | None = typer.Option(None, "--authfile", help=AUTHFILE_HELP, metavar="PATH"),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
) -> None:
    """Convert every tag of repositories or a whole registry to zstd:chunked; safe to run again.

    Each converted manifest records the digest of its source (annotation
    io.github.zconv.source.digest): a rerun skips every tag whose destination
    already is the conversion of the source's current digest, and converts
    again the tags that moved.
    """

    from converter.convert import ConvertOptions
    from converter.progress import Progress, human
    from converter.sync import (
        Destination,
        Syncer,
        parse_shard,
        parse_source,
        raise_for_failures,
        shard_from_env,
    )

    src_opts = transport_options(src_creds or creds, tls_verify, cert_dir, authfile, timeout)
    dst_opts = transport_options(dest_creds or creds, tls_verify, cert_dir, authfile, timeout)
    dest = Destination.parse(destination, suffix, dual)
    specs = parse_source(source, src_opts, tags)
    the_shard = parse_shard(shard) if shard else shard_from_env()
    progress = Progress(enabled=False if (quiet or json_out) else None)
    total = [0]

    def on_record(rec) -> None:  # type: ignore[no-untyped-def]
        if json_out:
            sys.stdout.write(json.dumps(rec.to_json()) + "\n")
            sys.stdout.flush()
            return
        if quiet:
            return
        total[0] += 1
        what = {"converted": "converted", "skipped": "up to date", "failed": "FAILED",
                "would-convert": "would convert"}[rec.action]
        line = f"[{total[0]}/{syncer.planned}] {rec.source} -> {rec.destination}: {what}"
        if rec.action == "converted":
            line += f" ({rec.layers_converted} layer(s) converted, {rec.layers_reused} reused, {human(rec.bytes_uploaded)} uploaded, {rec.seconds:.1f}s)"
        elif rec.reason:
            line += f" ({rec.reason})"
        typer.echo(printable(line))

    syncer = Syncer(specs, dest, ConvertOptions(level=level, threads=threads, strict=strict), dst_opts,
                    shard=the_shard, jobs=jobs, keep_going=keep_going, dry_run=dry_run, progress=progress,
                    on_record=on_record)
    summary = syncer.run()
    if not quiet:
        shard_text = f" (shard {the_shard[0]}/{the_shard[1]} of {summary.total_items})" if the_shard else ""
        acts = ["converted", "skipped", "failed"] if not dry_run else ["would-convert", "skipped", "failed"]
        counts = ", ".join(f"{summary.count(a)} {a}" for a in acts)
        print(f"zconv sync: {len(summary.records)} tag(s){shard_text}: {counts}; "
              f"{human(summary.bytes_uploaded)} uploaded, {summary.requests} registry request(s), "
              f"{summary.seconds:.1f}s", file=sys.stderr)
    raise_for_failures(summary)

