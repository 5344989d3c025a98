"""The ``lens`` command line: capture, analyze, run experiments, serve the dashboard."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import typer

import lens
from lens.kernels import auto_backend
from lens.model import ModelRef
from lens.record import CaptureFileError, CaptureSpec, make_executor
from lens.store import MANIFEST, Store, capture_dataset

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The attention workbench.")


def _print_version(value: bool) -> None:
    if value:
        try:
            version = metadata.version("attention-workbench")
        except metadata.PackageNotFoundError:  # a checkout that was never installed
            version = "0+unknown"
        typer.echo(f"attention-workbench {version}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the installed version and exit")) -> None:
    """The attention workbench: capture, analyze, edit and browse what a language model's attention does."""


MODEL_HELP = "built-in name, model directory, .gguf file or hub id (e.g. gpt2, org/name)"
# Where the model runs: the same three options on every command that loads one (lens.model._placement).
DEVICE = typer.Option(None, "--device", help="cpu | cuda | cuda:N | mps  [default: the best available: CUDA, "
                                             "then MPS, then the CPU]")
DTYPE = typer.Option("auto", "--dtype", help="auto (the checkpoint's own; fp32 on the CPU) | bfloat16 | float16 | "
                                             "float32")
DEVICE_MAP = typer.Option(None, "--device-map", help="shard the model over devices instead of --device: auto | "
                                                     "balanced | sequential (needs accelerate)")


def _model_ref(model: str, device: str | None, dtype: str, device_map: str | None):
    """The model and its placement, checked before anything loads (a bad --dtype fails here)."""
    try:
        return ModelRef(model, device=device, dtype=dtype, device_map=device_map)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


def _load(ref):
    try:
        return ref.load()
    except ValueError as err:  # a device this machine lacks; a model the workbench refuses, by name
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _runs_on(subject) -> str:
    """Where a loaded model runs, and which attention backend ``auto`` picks there."""
    dtype = str(subject.model.dtype).removeprefix("torch.")
    return f"runs on {subject.device} in {dtype}; attention backend auto: {auto_backend(subject.device)}"


@app.command()
def info(model: str = typer.Option("smollm2", help=MODEL_HELP), device: str = DEVICE, dtype: str = DTYPE,
         device_map: str = DEVICE_MAP):
    """Load a model and print the facts the workbench knows about it."""
    subject = _load(_model_ref(model, device, dtype, device_map))
    typer.echo(repr(subject))
    typer.echo(_runs_on(subject))
    arch = subject.arch  # discovered at load (lens.model._structure)
    typer.echo(f"structure: blocks {arch.layers}, attention .{arch.attn} -> .{arch.o_proj}"
               f"{' (Conv1D)' if arch.o_proj_conv1d else ''}, MLP .{arch.mlp}, final norm {arch.final_norm}, "
               f"{arch.residual} blocks")
    typer.echo(f"attention: {', '.join(arch.features()) or 'plain causal'}")
    if arch.hybrid:
        typer.echo(f"blocks with attention: {', '.join(map(str, arch.attn_layers))} (of 0..{arch.n_layers - 1}); "
                   "layers are named by block number")


# A Typer command takes one parameter per command-line option: capture_cmd has one for each of its 15.
@app.command("capture")
def capture_cmd(
    model: str = typer.Option("smollm2", help=MODEL_HELP),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    text: str = typer.Option(None, help="the text to capture"),
    file: Path = typer.Option(None, exists=True, dir_okay=False, help="read the text from this file"),
    dataset: Path = typer.Option(None, exists=True, dir_okay=False,
                                 help='prompts to capture into a store: .txt (one per line) or .jsonl ({"text": ...})'),
    out: Path = typer.Option(None, help="save the Capture (or, with --dataset, the store) into this directory"),
    backend: str = typer.Option("auto", help="eager | chunked | triton | auto"),
    executor: str = typer.Option("local", help="with --dataset: local (this process) or ray"),
    address: str = typer.Option(None, help="with --executor ray: the cluster to join (default: start a local one)"),
    workers: int = typer.Option(None, help="with --executor ray and no GPUs: how many actors"),
    shard_size: int = typer.Option(64, help="with --dataset: inputs per shard"),
    resume: bool = typer.Option(False, help="with --dataset: finish an interrupted store, keeping its valid shards"),
    stats: str = typer.Option("default", help="comma-separated statistic names to keep, or 'default' (all but "
                                              "patterns); a census keeps what it queries, e.g. "
                                              "sink_mass,entropy,distance,received,visible"),
):
    """Capture per-head attention statistics of one text (and print a summary), or of a dataset into a store."""
    if sum(x is not None for x in (text, file, dataset)) != 1:
        raise typer.BadParameter("give exactly one of --text or --file, or --dataset")
    spec = _capture_spec(stats, backend)
    ref = _model_ref(model, device, dtype, device_map)
    if dataset is not None:
        if out is None:
            raise typer.BadParameter("--dataset needs --out STORE, the directory the store is written to")
        _capture_dataset(ref, dataset, out, spec, _executor(executor, address, workers), shard_size, resume)
        return
    body = text if text is not None else file.read_text()
    subject = _load(ref)
    try:
        cap = lens.capture(subject, body, spec)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(lens.summarize(cap))
    if out is not None:
        cap.save(out)
        typer.echo(f"saved to {out}")


def _capture_spec(stats: str, backend: str) -> CaptureSpec:
    """``--stats`` and ``--backend`` as a CaptureSpec, checked before any model loads."""
    names = "default" if stats.strip() == "default" else [s.strip() for s in stats.split(",") if s.strip()]
    try:
        return CaptureSpec(stats=names, backend=backend)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _executor(kind: str, address: str | None, workers: int | None):
    """The executor of a ``--dataset`` capture (``--executor``, ``--address``, ``--workers``)."""
    if kind == "local" and workers is not None:
        raise typer.BadParameter("--workers is for --executor ray; the local executor runs in this process")
    try:
        return make_executor(kind, address=address, workers=workers)
    except (ValueError, ModuleNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _capture_dataset(model, dataset: Path, out: Path, spec: CaptureSpec, ex, shard_size: int, resume: bool) -> None:
    """Capture ``dataset`` into the store ``out`` on ``ex``; a Ctrl-C leaves the complete shards for ``--resume``."""
    try:
        store = capture_dataset(model, dataset, out, spec, executor=ex, shard_size=shard_size, resume=resume,
                                echo=typer.echo)
    except KeyboardInterrupt:
        done = Store(out).n_shards - len(Store(out).missing()) if (out / "store.json").is_file() else 0
        typer.echo(f"interrupted: {done} complete shard(s) in {out}; continue with the same command and --resume",
                   err=True)
        raise typer.Exit(130) from None
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    finally:
        ex.close()
    typer.echo(repr(store))


@app.command("analyze")
def analyze_cmd(
    capture_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                       help="a directory written by Capture.save, or a store (lens capture --dataset)"),
    json_out: bool = typer.Option(False, "--json", help="print the findings as JSON instead of the text summary"),
):
    """Run every analyzer on a saved Capture or a store and print the atlas (or JSON)."""
    try:
        if (capture_dir / MANIFEST).is_file():
            store = lens.Store(capture_dir)
            if store.missing():
                raise CaptureFileError(f"{capture_dir} is incomplete: shard(s) {store.missing()[:10]} missing; "
                                       "finish it with lens capture ... --resume")
            atlas = lens.analyze(store)  # streams over the shards; a damaged shard fails its checksum here
        else:
            atlas = lens.analyze(lens.Capture.load(capture_dir))
    except (FileNotFoundError, CaptureFileError) as err:
        raise typer.BadParameter(str(err), param_hint="CAPTURE_DIR") from err
    typer.echo(atlas.to_json() if json_out else str(atlas))


# One parameter per command-line option (a Typer command's docstring is its --help): run_cmd has 10.
@app.command("run")
def run_cmd(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="an experiment spec (TOML)"),
    db: Path = typer.Option(None, help="results database (default: runs.duckdb, or the spec's own)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
    executor: str = typer.Option(None, help="local (this process) | ray (Ray actors that keep the model loaded; "
                                             "needs the ray extra)"),
    address: str = typer.Option(None, help="Ray cluster address (e.g. ray://head:10001 or auto); default: start "
                                           "a local one"),
    workers: int = typer.Option(None, min=1, help="Ray actors when the cluster has no GPUs (else one per GPU)"),
    resume: bool = typer.Option(False, help="skip sweep runs already complete in the database"),
    device: str = typer.Option(None, "--device", help="overrides the spec's [model] device: cpu | cuda | cuda:N | "
                                                      "mps  [default: the spec's, else the best available]"),
    dtype: str = typer.Option(None, "--dtype", help="overrides the spec's [model] dtype: auto | bfloat16 | "
                                                    "float16 | float32"),
    device_map: str = typer.Option(None, "--device-map", help="overrides the spec's [model] device_map: auto | "
                                                              "balanced | sequential"),
):
    """Run a scripted intervention experiment (every run of its \\[sweep] table) and store its results."""
    from lens.experiments import SpecError, run_command  # not at the top: pydantic, scipy would slow `lens --help`

    if executor is not None and executor not in ("local", "ray"):
        raise typer.BadParameter(f"expected local or ray, got {executor!r}", param_hint="--executor")
    if executor != "ray" and (address is not None or workers is not None):
        raise typer.BadParameter("--address and --workers are for --executor ray", param_hint="--executor")
    try:
        placement = {k: v for k, v in (("device", device), ("dtype", dtype), ("device_map", device_map)) if v}
        _model_ref("x", **{"device": None, "dtype": "auto", "device_map": None, **placement})  # checks the form
        run_command(spec, db=db, quiet=quiet, echo=typer.echo, executor=executor, address=address,
                    workers=workers, resume=resume, placement=placement)
    except SpecError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except ModuleNotFoundError as err:  # --executor ray without Ray: the message says how to install it
        if "ray" not in str(err).lower():
            raise
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
    from lens.experiments import runs_command  # not at the top: pydantic, scipy would slow `lens --help`

    try:
        runs_command(db=db, compare=compare or None, metric=metric, limit=limit, echo=typer.echo)
    except (FileNotFoundError, ValueError) as err:  # no database; an unknown or unfinished run to compare
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


# One parameter per command-line option (a Typer command's docstring is its --help): dashboard_cmd has 11.
@app.command("dashboard")
def dashboard_cmd(
    model: str = typer.Option("smollm2", help="built-in name, model directory, .gguf file or hub id; 'none' serves "
                                              "saved work only, with no forward pass"),
    capture: list[Path] = typer.Option(None, exists=True, file_okay=False,
                                       help="a capture saved with lens capture --out to open (repeat the option)"),
    store: Path = typer.Option(None, exists=True, file_okay=False,
                               help="a store written by lens capture --dataset, for the Census page"),
    runs: Path = typer.Option(None, exists=True, dir_okay=False,
                              help="the results database of lens run (default ./runs.duckdb when present)"),
    max_tokens: int = typer.Option(None, help="cap live texts below the model's context"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (127.0.0.1 = this machine only)"),
    port: int = typer.Option(8050, help="port to serve on"),
    debug: bool = typer.Option(False, help="Dash debug mode (reloader, error pop-ups)"),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
):
    """Serve the Dash dashboard on a model, on saved captures (--capture), a store (--store) and runs (--runs)."""
    from lens.dashboard import serve  # not at the top: Dash, Plotly would slow every other command

    if model.lower() != "none":
        _model_ref(model, device, dtype, device_map)  # a bad --dtype or --device fails before anything loads
    try:
        serve(model=model, host=host, port=port, debug=debug, max_tokens=max_tokens, captures=capture or (),
              store=store, runs=runs, device=device, dtype=dtype, device_map=device_map)
    except (FileNotFoundError, ValueError) as err:  # a directory that is not a capture or a store
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def main() -> None:
    app()


if __name__ == "__main__":
    main()
