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
    arch = subject.arch  # discovered at load (lens._structure)
    typer.echo(f"structure: blocks {arch.layers}, attention .{arch.attn} -> .{arch.o_proj}"
               f"{' (Conv1D)' if arch.o_proj_conv1d else ''}, MLP .{arch.mlp}, final norm {arch.final_norm}, "
               f"{arch.residual} blocks")
    typer.echo(f"attention: {', '.join(arch.features()) or 'plain causal'}")


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


@app.command("analyze")
def analyze_cmd(
    capture_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a directory written by Capture.save"),
    json_out: bool = typer.Option(False, "--json", help="print the findings as JSON instead of the text summary"),
):
    """Run every analyzer on a saved Capture and print the atlas (or JSON)."""
    import lens

    from lens._capture_data import CaptureFileError

    try:
        cap = lens.Capture.load(capture_dir)
    except (FileNotFoundError, CaptureFileError) as err:
        raise typer.BadParameter(str(err), param_hint="CAPTURE_DIR") from err
    atlas = lens.analyze(cap)
    typer.echo(atlas.to_json() if json_out else str(atlas))


@app.command("run")
def run_cmd(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="an experiment spec (TOML)"),
    db: Path = typer.Option(None, help="results database (default: runs.duckdb, or the spec's own)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
):
    """Run a scripted intervention experiment and store its results."""
    from lens.experiments import SpecError, run_command

    try:
        run_command(spec, db=db, quiet=quiet, echo=typer.echo)
    except SpecError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


@app.command("runs")
def runs_cmd(
    db: Path = typer.Option(Path("runs.duckdb"), help="results database"),
    compare: list[str] = typer.Option(None, help="run ids to compare side by side (repeat the option)"),
    metric: str = typer.Option("accuracy", help="metric to show, or 'all'"),
    limit: int = typer.Option(20, help="show at most this many runs"),
):
    """List the stored experiment runs, or compare some of them."""
    from lens.experiments import runs_command

    try:
        runs_command(db=db, compare=compare or None, metric=metric, limit=limit, echo=typer.echo)
    except (FileNotFoundError, ValueError) as err:  # no database; an unknown or unfinished run to compare
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


@app.command("dashboard")
def dashboard_cmd(
    model: str = typer.Option("smollm2", help="built-in name, model directory, .gguf file or hub id"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (127.0.0.1 = this machine only)"),
    port: int = typer.Option(8050, help="port to serve on"),
    debug: bool = typer.Option(False, help="Dash debug mode (reloader, error pop-ups)"),
):
    """Serve the Dash dashboard on a model."""
    from dashboard import serve

    serve(model=model, host=host, port=port, debug=debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
