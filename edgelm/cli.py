"""The `edgelm` command: parse, call the library, print. User mistakes exit 2 with one line."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import UserError

app = typer.Typer(
    help="Export small causal language models to GGUF and ONNX for phones and laptop CPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class PositionEncoding(str, Enum):
    none = "none"
    rope = "rope"


PositionEncodingOption = Annotated[
    Optional[PositionEncoding],
    typer.Option("--position-encoding", help="Override the checkpoint: 'none' (NoPE) or 'rope'."),
]
TemperaturesOption = Annotated[
    Optional[Path],
    typer.Option("--head-temperatures", help='JSON {"layers": [[λ per head], …]}; replaces temperatures found in the checkpoint.'),
]
AllowPickleOption = Annotated[
    bool, typer.Option("--allow-pickle", help="Load a pickle .bin checkpoint with torch.load(weights_only=True).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"edgelm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    pass


@app.command()
def init(
    preset: Annotated[str, typer.Argument(help="Preset name; `edgelm init --list` shows them.")] = "",
    out_dir: Annotated[Optional[Path], typer.Argument(help="Folder to create.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
    list_presets: Annotated[bool, typer.Option("--list", help="List the presets.")] = False,
) -> None:
    """Write a random-weight checkpoint of a preset, in its family's native layout, with a tokenizer."""
    from .models.presets import PRESETS, write_preset

    if list_presets or not preset:
        for name, p in PRESETS.items():
            out.print(f"{name:22} {p.description}")
        return
    if out_dir is None:
        raise UserError("OUT_DIR is missing", None, f"usage: edgelm init {preset} OUT_DIR")
    with err.status(f"writing {preset}…"):
        write_preset(preset, out_dir, seed=seed, force=force)
    out.print(f"wrote {preset} to {out_dir}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A model folder.")],
    position_encoding: PositionEncodingOption = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    as_json: JsonOption = False,
) -> None:
    """Family, dims, parameter count, position encoding and which rule decided it, temperatures, tokenizer."""
    from .inspection import describe_checkpoint

    info = describe_checkpoint(
        path,
        position_encoding=position_encoding.value if position_encoding else None,
        head_temperatures=head_temperatures,
        allow_pickle=allow_pickle,
    )
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(title=str(path), show_header=False)
    for key, value in info.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    out.print(table)


def main() -> None:
    try:
        app()
    except UserError as exc:
        err.print(f"error: {exc.line()}", markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was left half-written")
        sys.exit(130)
