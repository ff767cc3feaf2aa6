"""`zconv sync SRC [DEST]`: convert every tag of repositories, idempotently, in shards.

Argument parsing and printing only; the work is in converter/sync.py.
"""

from __future__ import annotations

import json
import sys

import typer

from converter.cli_app import app
from converter.commands import (
    ALL_HELP,
    AUTHFILE_HELP,
    CERT_DIR_HELP,
    CREDS_HELP,
    PLATFORM_HELP,
    RETRY_DELAY_HELP,
    RETRY_TIMES_HELP,
    TIMEOUT_HELP,
    TLS_HELP,
    check_platform_flags,
    side_options,
    write_digestfile,
)
from converter.errors import UsageError
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
    source: str = typer.Argument(
        ...,
        help="docker://HOST/REPO (every tag; REPO:TAG for one) or a YAML file in the "
        "shape of `skopeo sync --src yaml` (registry -> images / images-by-tag-regex / images-by-semver).",
    ),
    destination: str | None = typer.Argument(
        None,
        help="docker://HOST/PREFIX: REPO goes to PREFIX/REPO, tags keep "
        "their names. Omit it to write into the source repositories "
        "(needs --suffix or --dual).",
    ),
    tags: str | None = typer.Option(
        None,
        "--tags",
        metavar="REGEX",
        help="Only tags this regular expression matches (searched, as skopeo's regexes: anchor with ^...$).",
    ),
    suffix: str = typer.Option(
        "",
        "--suffix",
        help="Destination tag = source tag + SUFFIX (e.g. -zstd); tags already "
        "ending in SUFFIX are outputs, never sources.",
    ),
    dual: bool = typer.Option(
        False,
        "--dual",
        help="Each destination tag becomes an index with the original and the "
        "zstd:chunked instance (in place when DEST is omitted).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be converted; write nothing."),
    shard: str | None = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Take shard I of N (from 0) of the "
        "(repository, tag) pairs, by a stable hash. Default: $ZCONV_SHARD, or "
        "$JOB_COMPLETION_INDEX of $ZCONV_SHARDS in a Kubernetes Indexed Job.",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="Images converted at the same time."),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="Carry on past a failed image; exit non-zero at the end."
    ),
    level: int | None = typer.Option(None, "--level", "-l", min=1, max=22, help="zstd level (as convert)."),
    threads: int = typer.Option(
        0, "--threads", "-t", min=0, help="Frames compressed in parallel per image; 0 = one per CPU."
    ),
    strict: bool = typer.Option(False, "--strict", help="Fail an image whose layer cannot be zstd:chunked."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="One JSON object per line per (repository, tag): source, "
        "destination, source_digest, destination_digest, action, reason, bytes_uploaded, seconds.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary; errors only."),
    creds: str | None = typer.Option(None, "--creds", help=CREDS_HELP, metavar="USER:PASS"),
    src_creds: str | None = typer.Option(
        None, "--src-creds", help="USER:PASS for the source registry.", metavar="USER:PASS"
    ),
    dest_creds: str | None = typer.Option(
        None, "--dest-creds", help="USER:PASS for the destination registry.", metavar="USER:PASS"
    ),
    tls_verify: str = typer.Option("true", "--tls-verify", help=TLS_HELP, metavar="BOOL"),
    cert_dir: str | None = typer.Option(None, "--cert-dir", help=CERT_DIR_HELP, metavar="DIR"),
    authfile: str | None = typer.Option(None, "--authfile", help=AUTHFILE_HELP, metavar="PATH"),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
    src_tls_verify: str | None = typer.Option(
        None,
        "--src-tls-verify",
        metavar="BOOL",
        help="Verify the source registries' TLS (default: --tls-verify; a YAML source's tls-verify wins).",
    ),
    dest_tls_verify: str | None = typer.Option(
        None, "--dest-tls-verify", metavar="BOOL", help="Verify the destination registry's TLS (default: --tls-verify)."
    ),
    retry_times: int | None = typer.Option(
        None,
        "--retry-times",
        "--retry",
        min=0,
        max=100,
        metavar="N",
        help=RETRY_TIMES_HELP + " Each image has its own budget.",
    ),
    retry_delay: str | None = typer.Option(None, "--retry-delay", metavar="DURATION", help=RETRY_DELAY_HELP),
    digestfile: str | None = typer.Option(
        None,
        "--digestfile",
        metavar="FILE",
        help="After a run without "
        "failures, write one line `DIGEST docker://HOST/REPO:TAG` per destination "
        "tag of this run (converted or already up to date), sorted by reference, "
        "atomically.",
    ),
    platform: str | None = typer.Option(
        None,
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help=PLATFORM_HELP + " The destination records the chosen instance's digest as its source; "
        "not with an in-place sync.",
    ),
    all_platforms: bool = typer.Option(False, "--all", help=ALL_HELP),
    cache_dir: str | None = typer.Option(
        None,
        "--cache-dir",
        metavar="DIR",
        help="Frame cache and layer memo "
        "directory, as for convert (default $ZCONV_CACHE_DIR, else "
        "$XDG_CACHE_HOME/zconv, else ~/.cache/zconv). Persist it between runs "
        "(and share it between shards) so a run started again redoes nothing.",
    ),
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="Neither read nor fill the cache (layers shared within the run are still converted once).",
    ),
    cache_max_size: str | None = typer.Option(
        None, "--cache-max-size", metavar="SIZE", help="Prune the cache to SIZE (e.g. 500M, 2G; default 2G) at the end."
    ),
) -> None:
    """Convert every tag of repositories or a whole registry to zstd:chunked; safe to run again.

    Each converted manifest records the digest of its source (annotation
    io.github.zconv.source.digest): a rerun skips every tag whose destination
    already is the conversion of the source's current digest, and converts
    again the tags that moved.
    """

    from converter.commands.cache import parse_size
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

    check_platform_flags(platform, all_platforms)
    if digestfile and dry_run:
        raise UsageError("--digestfile records what a run wrote; --dry-run writes nothing")
    src_opts = side_options(
        "src", src_creds or creds, tls_verify, src_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
    )
    dst_opts = side_options(
        "dest", dest_creds or creds, tls_verify, dest_tls_verify, cert_dir, authfile, timeout, retry_times, retry_delay
    )
    dest = Destination.parse(destination, suffix, dual)
    specs = parse_source(source, src_opts, tags)
    the_shard = parse_shard(shard) if shard else shard_from_env()
    progress = Progress(enabled=False if (quiet or json_out) else None)
    total = [0]

    def on_record(rec) -> None:
        if json_out:
            sys.stdout.write(json.dumps(rec.to_json()) + "\n")
            sys.stdout.flush()
            return
        if quiet:
            return
        total[0] += 1
        what = {
            "converted": "converted",
            "skipped": "up to date",
            "failed": "FAILED",
            "would-convert": "would convert",
        }[rec.action]
        line = f"[{total[0]}/{syncer.planned}] {rec.source} -> {rec.destination}: {what}"
        if rec.action == "converted":
            line += f" ({rec.layers_converted} layer(s) converted, {rec.layers_reused} reused, {human(rec.bytes_uploaded)} uploaded, {rec.seconds:.1f}s)"
        elif rec.reason:
            line += f" ({rec.reason})"
        typer.echo(printable(line))

    options = ConvertOptions(
        level=level,
        threads=threads,
        strict=strict,
        platform=platform,
        cache=not no_cache,
        cache_dir=cache_dir,
        cache_max_size=parse_size(cache_max_size) if cache_max_size else None,
    )
    syncer = Syncer(
        specs,
        dest,
        options,
        dst_opts,
        shard=the_shard,
        jobs=jobs,
        keep_going=keep_going,
        dry_run=dry_run,
        progress=progress,
        on_record=on_record,
    )
    summary = syncer.run()
    if not quiet:
        shard_text = f" (shard {the_shard[0]}/{the_shard[1]} of {summary.total_items})" if the_shard else ""
        acts = ["converted", "skipped", "failed"] if not dry_run else ["would-convert", "skipped", "failed"]
        counts = ", ".join(f"{summary.count(a)} {a}" for a in acts)
        print(
            f"zconv sync: {len(summary.records)} tag(s){shard_text}: {counts}; "
            f"{human(summary.bytes_uploaded)} uploaded, {summary.requests} registry request(s), "
            f"{summary.seconds:.1f}s",
            file=sys.stderr,
        )
        fr = summary.frames
        if fr and fr["cache"]:
            print(
                f"zconv sync: frames: {fr['cache']['frames']} from the cache, {fr['compressed']['frames']} compressed",
                file=sys.stderr,
            )
    raise_for_failures(summary)
    if digestfile:
        written = sorted(
            (r.destination, r.destination_digest)
            for r in summary.records
            if r.action in ("converted", "skipped") and r.destination_digest
        )
        write_digestfile(digestfile, "".join(f"{digest} {ref}\n" for ref, digest in written))
