"""The ``lens`` command line: capture, analyze, run experiments, serve the dashboard."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The attention workbench.")


@app.command()
def info(model: str = typer.Option("smollm2", help="built-in name, model directory, .gguf file or hub id")):
    """Load a model and print the facts the workbench knows about it."""
    import lens

    subject = lens.load(model)
    typer.echo(repr(subject))


@app.command("capture")
def capture_cmd(
    model: str = typer.Option("smollm2", help="built-in name, model directory, .gguf file or hub id"),
    text: str = typer.Option(None, help="the text to capture"),
    file: Path = typer.Option(None, exists=True, dir_okay=False, help="read the text from this file"),
    out: Path = typer.Option(None, help="save the Capture into this directory"),
    backend: str = typer.Option("auto", help="eager | chunked | triton | auto"),
):
    """Capture per-head attention statistics of one text and print a summary."""
    import lens

    if (text is None) == (file is None):
        raise typer.BadParameter("give exactly one of --text or --file")
    body = text if text is not None else file.read_text()
    subject = lens.load(model)
    try:
        cap = lens.capture(subject, body, backend=backend)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(lens.summarize(cap))
    if out is not None:
        cap.save(out)
        typer.echo(f"saved to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
