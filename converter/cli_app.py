"""The typer app object, alone, so command modules can import it without cycles.

Commands register themselves with `@app.command()` in their own module
(converter/commands/*.py) and converter/cli.py imports those modules.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="zconv",
    help=(
        "Convert container images to zstd:chunked layers (partial pulls for podman, CRI-O, skopeo) "
        "and move them between OCI layouts, archives and registries.\n\n"
        "Image references: oci:PATH[:TAG] (a bare PATH means the same), oci-archive:PATH[:TAG], "
        "docker-archive:PATH[:NAME:TAG], docker://HOST[:PORT]/REPO[:TAG|@DIGEST]."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
