"""`zconv cache info|prune|clear`: the frame cache and layer memo of converter/cache."""

from __future__ import annotations

import json
import re
from typing import Optional

import typer

from converter.cli_app import app
from converter.errors import UsageError, ZconvError

cache_app = typer.Typer(help="The local cache of compressed frames and converted layers.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """ "2G", "500M", "1048576" -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise UsageError(f"size {text!r}: expected a number with an optional K, M, G or T suffix")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _open(cache_dir: Optional[str], max_size: Optional[str] = None):
    import sqlite3

    from converter.cache.frames import DEFAULT_MAX_SIZE, FrameCache, default_cache_dir
    from converter.cache.memo import LayerMemo

    root = cache_dir or default_cache_dir()
    try:
        return FrameCache(root, parse_size(max_size) if max_size else DEFAULT_MAX_SIZE), LayerMemo(root)
    except (OSError, sqlite3.Error) as e:
        raise ZconvError(f"cache {root}: {e}") from None


DIR_HELP = "Cache directory (default $ZCONV_CACHE_DIR, else $XDG_CACHE_HOME/zconv, else ~/.cache/zconv)."


@cache_app.command("info")
def info(
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help=DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Entries, bytes and the hit rate of the last run."""
    from converter.progress import human

    frames, memo = _open(cache_dir)
    try:
        res = frames.info()
        res["memo"] = memo.info()
    finally:
        frames.close(prune=False)
        memo.close()
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"cache: {res['dir']}")
    typer.echo(f"frames: {res['entries']} ({human(res['frame_bytes'])}), on disk {human(res['disk_bytes'])}")
    typer.echo(f"layers remembered: {res['memo']['layers']}, blob locations: {res['memo']['blob_locations']}")
    last = res["last_run"]
    if last and last.get("lookups"):
        typer.echo(
            f"last run: {last['hits']} of {last['lookups']} frames from the cache "
            f"({100 * last['hit_rate']:.1f}%, {human(last['hit_bytes'])})"
        )


@cache_app.command("prune")
def prune(
    max_size: str = typer.Option("2G", "--max-size", metavar="SIZE", help="Keep the cache under SIZE (e.g. 500M, 2G)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help=DIR_HELP),
) -> None:
    """Drop least recently used frames until the cache fits in --max-size."""
    from converter.progress import human

    limit = parse_size(max_size)
    frames, memo = _open(cache_dir, max_size)
    try:
        freed = frames.prune(limit)
        size = frames.disk_size()
    finally:
        frames.close(prune=False)
        memo.close()
    typer.echo(f"freed {human(freed)}; cache is {human(size)}")


@cache_app.command("clear")
def clear(cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help=DIR_HELP)) -> None:
    """Remove every cached frame and remembered layer."""
    frames, memo = _open(cache_dir)
    try:
        frames.clear()
        memo.clear()
    finally:
        frames.close(prune=False)
        memo.close()
    typer.echo("cache cleared")
