"""The training loop on HF Accelerate: one explicit loop, no hooks or inheritance.

Data order, augmentations, RNG, optimizer and schedule are all restored on ``resume``, so a run stopped at a
checkpoint and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, set_seed

from mmssl.build import (
    build_model,
    build_processors,
    build_train_module,
    label_space,
    load_processors,
    load_source,
    probe_batches,
    save_processors,
)
from mmssl.compiler import Plan
from mmssl.data.errors import DataErrorPolicy, SkippedRow, readable_rows
from mmssl.data.feed import TrainFeed
from mmssl.data.labels import LabelSpace
from mmssl.encoders.adapt import count_parameters
from mmssl.eval.monitors import TrainingMonitor
from mmssl.plugins import check_plugin_files, plugin_file_records
from mmssl.recipe import dump_recipe
from mmssl.train import checkpoint as ckpt
from mmssl.train import integrity, trackers
from mmssl.train.dist_checkpoint import (
    check_global_batch,
    full_model_state,
    is_sharded_checkpoint,
    load_any,
    save_sharded,
)
from mmssl.train.grad_cache import GradCache, cached_inputs, check_cacheable, sync_gradients
from mmssl.train.metrics import MetricLogger
from mmssl.train.optim import build_optimizer
from mmssl.train.preemption import GracefulStop, any_process, ignore_stop_signals
from mmssl.train.progress import progress
from mmssl.train.run_folder import (
    RunExistsError,
    check_output,
    check_resume_recipe,
    read_meta,
    record_resume,
    write_setup,
)
from mmssl.train.schedule import lr_multiplier
from mmssl.train.sharding import gradient_sync, shard
from mmssl.train.speed import apply_speed_options

__all__ = ["RunExistsError", "TrainResult", "train"]


@dataclass
class TrainResult:
    """Where a run stands. ``stopped_by`` names the signal (``SIGTERM``) when a stop signal ended it early."""

    output: Path
    step: int
    finished: bool
    stopped_by: str | None = None


def _cpu_processes() -> bool:
    """True under a multi-process launcher (torchrun) on a machine without an accelerator.

    Accelerate sets up a gloo process group on CPUs only when asked for the CPU; without it every process would
    train alone, as rank 0, and all of them would write the same run folder.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def train(
    plan: Plan,
    output: Path,
    resume: bool | Literal["auto"] = False,
    stop_after: int | None = None,
    resume_step: int | None = None,
) -> TrainResult:
    """Train the recipe of ``plan`` into ``output``.

    SIGTERM or SIGINT during the loop end it at the next step boundary, after a checkpoint of that step on every
    process (``TrainResult.stopped_by``; ``mmssl train`` then exits with ``preemption.STOPPED_EXIT_CODE``).

    Args:
        plan: A compiled recipe (``mmssl.compiler.compile_recipe``).
        output: Run folder: recipe, processors, checkpoints, metrics, final weights, ``eval.json``.
        resume: Continue from the latest intact checkpoint in ``output`` (a damaged one is skipped with a warning);
            ``"auto"``: continue if ``output`` holds a run, start otherwise (a restarted elastic worker group).
        stop_after: Stop (as if killed) after this optimizer step, without final weights or evaluation.
        resume_step: Continue from the checkpoint of this step instead (implies ``resume``).
    """
    resume = resume or resume_step is not None
    recipe, spec = plan.recipe, plan.recipe.train
    output = Path(output)
    accelerator = Accelerator(
        cpu=_cpu_processes(),
        mixed_precision=spec.precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=spec.find_unused_parameters)],
        log_with=list(spec.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "tb")),
    )
    output = Path(output)
    if resume == "auto":  # elastic restarts: continue the run whose setup is there, else start one
        resume = (output / "run.json").is_file() or ckpt.latest_checkpoint(output / "checkpoints") is not None
    sharded = spec.strategy == "fsdp" and accelerator.num_processes > 1
    if sharded and spec.monitor_every:
        raise ValueError(
            "train.monitor_every: the label-free monitors embed on the main process only, which a "
            "sharded (fsdp) model cannot do; set monitor_every: 0 or strategy: ddp"
        )
    if sharded and spec.contrastive_chunk:
        raise ValueError("train.contrastive_chunk is not supported with strategy: fsdp yet; use strategy: ddp")
    recipe_yaml = dump_recipe(recipe)
    reuse = check_output(output, resume)
    changes = {}
    global_batch = spec.batch_size * accelerator.num_processes * spec.grad_accum
    if reuse:  # one run, one recipe: only run length, schedule, logging and cadence may change
        changes = check_resume_recipe(output, recipe_yaml)
        meta = read_meta(output)
        check_global_batch(meta, global_batch, str(output))
        if "plugins" in meta:  # runs set up before plugin files were recorded have no record to compare with
            check_plugin_files(recipe.plugins, recipe.base_dir, meta["plugins"], str(output))
        if (output / "labels.json").is_file():
            plan.set_labels(LabelSpace.from_json(json.loads((output / "labels.json").read_text())))
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    set_seed(recipe.seed)

    train_source = load_source(plan, "train")
    processors_dir = output / "processors"
    skipped_log = output / "skipped.jsonl"
    policy = DataErrorPolicy(
        recipe.data.on_error, recipe.data.max_errors, skipped_log if accelerator.is_main_process else None
    )
    if accelerator.is_main_process and not reuse:
        policy.restore(skipped_log, -1, rewrite=True)  # a fresh fit lists the rows it skips again
        meta = {
            "base_dir": str(recipe.base_dir.resolve()),
            "plugins": plugin_file_records(recipe.plugins, recipe.base_dir),
            "global_batch": global_batch,  # a resume under another process count must keep it
        }
        write_setup(
            output,
            lambda folder: save_processors(build_processors(plan, train_source, policy), folder),
            label_space(plan).to_json(),
            recipe_yaml,
            meta,
        )
    accelerator.wait_for_everyone()
    processors = load_processors(plan, processors_dir)

    model = build_model(plan, processors)
    module = build_train_module(plan, model, processors, probe_batches(plan, processors, train_source))
    apply_speed_options(model.encoders, spec.activation_checkpointing, spec.compile)
    if spec.contrastive_chunk:
        check_cacheable(model.encoders, cached_inputs(module.objectives))
    if sharded:
        shard(module.to(accelerator.device), **spec.fsdp.model_dump())
    optimizer = build_optimizer(
        module, spec.lr, spec.weight_decay, spec.betas, spec.layer_decay, model.encoders.values()
    )
    counts = {m: count_parameters(e) for m, e in model.encoders.items()} | {"all": count_parameters(module)}
    if accelerator.is_main_process:
        ckpt.atomic_write_text(output / "parameters.json", json.dumps(counts, indent=2) + "\n")
    accelerator.print(f"parameters: {counts['all']['trainable']:,} trainable of {counts['all']['total']:,}")
    schedule = lr_multiplier(spec.schedule, spec.steps, spec.warmup_steps, spec.decay_fraction, spec.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    inner = accelerator.unwrap_model(module)
    cache = (
        GradCache(spec.contrastive_chunk, accelerator.autocast, accelerator.backward)
        if spec.contrastive_chunk
        else None
    )
    set_seed(recipe.seed, device_specific=True)  # distinct mask/dropout noise per process

    checkpoints = output / "checkpoints"
    step = 0
    found = None
    data_state = None
    if reuse and (ckpt.complete_checkpoints(checkpoints) or resume_step is not None):

        def load(path: Path) -> int:
            if sharded or is_sharded_checkpoint(path):  # any process count, from or into FSDP or DDP
                raw_optimizer = getattr(optimizer, "optimizer", optimizer)
                return load_any(path, inner, raw_optimizer, scheduler, accelerator.process_index)
            return ckpt.load_checkpoint(path, inner, optimizer, scheduler, accelerator.process_index)

        found, step = integrity.resume_from(
            ckpt.resume_candidates(checkpoints, resume_step),
            load,
            lambda failed: any_process(failed, accelerator),
            check_here=accelerator.is_main_process,
            warn=lambda line: accelerator.print(f"warning: {line}"),
        )
        accelerator.print(f"resumed from {found} at step {step}")
        if (found / DATA_STATE).is_file():  # a streamed source's position (any number of processes may resume it)
            data_state = json.loads((found / DATA_STATE).read_text())
    elif reuse:
        accelerator.print(f"{output} has no checkpoint yet: starting from step 0 with its saved setup")
    if reuse and accelerator.is_main_process:
        record_resume(output, step, changes, recipe_yaml)
    # The skips up to the step resumed from (and those of fitting the processors, step 0) count on every process;
    # the main process drops later ones from the list (an atomic rewrite, so the others read it whole).
    policy.restore(skipped_log, step, rewrite=accelerator.is_main_process)

    views = plan.views()
    columns = {m: recipe.column_of(m) for m in views}
    feed = TrainFeed(
        train_source,
        columns,
        processors,
        views,
        recipe.seed,
        spec.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        spec.num_workers,
        start_micro_batch=step * spec.grad_accum,
        state=data_state,
        on_error=recipe.data.on_error,
        worker_init=_data_worker_init,
    )
    logger = MetricLogger(output, enabled=accelerator.is_main_process, resume_step=step)
    if found is not None and (found / f"metrics_rank{accelerator.process_index}.json").is_file():
        logger.load_state(json.loads((found / f"metrics_rank{accelerator.process_index}.json").read_text()))
    trackers.start(accelerator, list(spec.report_to), recipe.model_dump(mode="json"), recipe.name, output, step)
    # -- label-free monitors (train.monitor_every): a fixed held batch, embedded on the main process only --
    monitor = None
    if spec.monitor_every and accelerator.is_main_process:
        held = train_source.rows[: spec.monitor_rows]
        if policy.skip:  # the held rows must decode; unreadable ones are met (and listed) in training anyway
            held = readable_rows(replace(train_source, rows=held), columns, processors)[0].rows
        monitor = TrainingMonitor(
            processors,
            columns,
            held,
            spec.monitor_rows,
            {m: p.capabilities.views for m, p in plan.plugins.items()},
            recipe.seed,
        )
    # -- end monitors --
    bar = progress(spec.steps, step, recipe.name, disable=not accelerator.is_main_process)
    module.train()
    last_time, rows_seen = time.perf_counter(), 0
    stop = GracefulStop(announce=bar.write if accelerator.is_main_process else lambda line: None)
    stop.__enter__()
    try:
        while step < spec.steps:
            skipped: list[SkippedRow] = []
            for micro in range(spec.grad_accum):
                batch = feed.next().to(accelerator.device)
                skipped += [s.at_step(step + 1) for s in batch.skipped]
                rows_seen += len(batch)
                sync = micro == spec.grad_accum - 1
                # GradCache runs several backward passes per micro-batch: all without DDP's hooks, averaged once below
                ddp_sync = sync and cache is None
                with accelerator.no_sync(module) if not ddp_sync else _null(), gradient_sync(module, sync):
                    if cache is not None:
                        terms = cache.step(module, inner, batch, 1.0 / spec.grad_accum)
                    else:
                        with accelerator.autocast():
                            terms = module(batch)
                    loss = terms["loss"]
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {step}; terms: {_floats(terms)}")
                    if cache is None:
                        accelerator.backward(loss / spec.grad_accum)
                logger.accumulate(terms)
            if cache is not None:
                sync_gradients(inner)
            if spec.clip_grad is not None:
                terms_norm = accelerator.clip_grad_norm_(module.parameters(), spec.clip_grad)
                if hasattr(terms_norm, "full_tensor"):  # FSDP2: a DTensor
                    terms_norm = terms_norm.full_tensor()
                logger.accumulate({"grad_norm": terms_norm})
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if policy.skip:
                policy.record(_all_processes(skipped, accelerator))
            inner.after_optimizer_step(step, spec.steps)
            bar.update(1)
            monitor_due = spec.monitor_every > 0 and step % spec.monitor_every == 0  # same on every process
            stopping = stop.agreed(accelerator)  # every process stops after the same step
            if step % spec.log_every == 0 or step == spec.steps or monitor_due:
                now = time.perf_counter()
                extra = {
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": rows_seen * accelerator.num_processes / (now - last_time),
                }
                if policy.skip:
                    extra.update(policy.metrics())
                if monitor is not None and monitor_due:
                    extra.update(monitor(accelerator.unwrap_model(module).model, step, accelerator.device, bar.write))
                    now = time.perf_counter()
                record = logger.flush(step, accelerator, extra)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                last_time, rows_seen = now, 0
            if (spec.checkpoint_every and step % spec.checkpoint_every == 0) or step == spec.steps or stopping:
                stream_state = feed.state() if feed.streamed else None
                if sharded:
                    if accelerator.is_main_process:
                        staging = ckpt.begin_checkpoint(checkpoints, step)
                        if stream_state is not None:
                            (staging / DATA_STATE).write_text(json.dumps(stream_state))
                    accelerator.wait_for_everyone()
                    staging = ckpt.staging_dir(checkpoints, step)
                    (staging / f"metrics_rank{accelerator.process_index}.json").write_text(json.dumps(logger.state()))
                    raw_optimizer = getattr(optimizer, "optimizer", optimizer)
                    save_sharded(
                        checkpoints, step, inner, raw_optimizer, scheduler, spec.keep_checkpoints,
                        accelerator.process_index,
                    )  # fmt: skip
                else:
                    save_checkpoint(
                        accelerator, checkpoints, step, module, optimizer, scheduler, spec.keep_checkpoints, logger,
                        stream_state,
                    )  # fmt: skip
            if stopping and step < spec.steps:
                accelerator.print(f"stopped by {stopping} at step {step}; checkpoint written")
                return TrainResult(output, step, finished=False, stopped_by=stopping)
            if stop_after is not None and step >= stop_after and step < spec.steps:
                return TrainResult(output, step, finished=False)
    finally:
        stop.__exit__()
        _shutdown_data_workers(feed.batches)
        bar.close()
        logger.close()
        for tracker in accelerator.trackers:  # not end_training(): it also destroys the process group, which the
            tracker.finish()  # final gather and barrier below (and a caller's next run in this process) still need
    if policy.skip:
        accelerator.print(f"skipped {policy.total} unreadable samples (listed in {skipped_log})")
    full = full_model_state(inner) if sharded else dict(inner.state_dict())  # gathering shards is collective
    if accelerator.is_main_process:
        for part in ("model", "objectives"):
            # Objective heads (temperatures, predictors, decoders): exporters read e.g. CLIP's logit scale from here.
            tensors = {k.removeprefix(f"{part}."): v for k, v in full.items() if k.startswith(f"{part}.")}
            ckpt.save_tensors_atomic(tensors, output / f"{part}.safetensors")
    accelerator.wait_for_everyone()
    return TrainResult(output, step, finished=True)


DATA_STATE = "data.json"
"""Checkpoint file with a streamed source's position (``mmssl.data.feed.TrainFeed.state``)."""


def save_checkpoint(
    accelerator: Accelerator, root: Path, step: int, module, optimizer, scheduler, keep: int,
    logger: MetricLogger | None = None, data_state: dict | None = None,
) -> None:  # fmt: skip
    """Write checkpoint ``step`` from every process; if any process fails, all raise and the staging folder goes."""
    failure: BaseException | None = None
    if accelerator.is_main_process:
        try:
            staging = ckpt.begin_checkpoint(root, step)
            if data_state is not None:
                (staging / DATA_STATE).write_text(json.dumps(data_state))
        except Exception as err:
            failure = err
    accelerator.wait_for_everyone()
    if failure is None:
        try:
            staging = ckpt.staging_dir(root, step)
            ckpt.write_rng(staging, accelerator.process_index)
            if logger is not None:  # the part of the logging interval already run, so a resume logs the same mean
                rank = accelerator.process_index
                (staging / f"metrics_rank{rank}.json").write_text(json.dumps(logger.state()))
        except Exception as err:
            failure = err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and failure is None:
        try:
            ckpt.finish_checkpoint(root, step, accelerator.unwrap_model(module), optimizer, scheduler, keep)
        except Exception as err:
            failure = err
    if any_process(failure is not None, accelerator):
        if accelerator.is_main_process:
            ckpt.discard_staging(root, step)
        accelerator.wait_for_everyone()
        previous = ckpt.latest_checkpoint(root)
        needed = integrity.checkpoint_bytes(
            previous, accelerator.unwrap_model(module).state_dict(), optimizer.state_dict()
        )
        reason = failure if failure is not None else RuntimeError("the checkpoint write failed on another process")
        raise integrity.write_failure(reason, root, ckpt.checkpoint_name(step), needed, previous) from failure
    accelerator.wait_for_everyone()


def _all_processes(skipped: list[SkippedRow], accelerator: Accelerator) -> list[SkippedRow]:
    """The skips of this step on every process, in rank order (the same list everywhere)."""
    if accelerator.num_processes == 1:
        return skipped
    counts = accelerator.reduce(torch.tensor([len(skipped)], device=accelerator.device), reduction="sum")
    if int(counts.item()) == 0:  # the usual case: one small all-reduce, no object gather
        return []
    gathered: list[list[SkippedRow]] = [[] for _ in range(accelerator.num_processes)]
    torch.distributed.all_gather_object(gathered, skipped)
    return [s for part in gathered for s in part]


def _shutdown_data_workers(batches: object) -> None:
    """End the data workers now. They ignore SIGTERM, so the SIGTERM that multiprocessing sends them at exit would
    not end them, and an error's traceback can keep the iterator (and so the workers) alive until then."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _data_worker_init(worker_id: int) -> None:
    """Data workers decode and augment one row at a time; torch threads there only fight the training step.
    Stop signals are the main process's to handle (it checkpoints, then ends the workers)."""
    torch.set_num_threads(1)
    ignore_stop_signals()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        k: float(v.detach().float().mean()) for k, v in terms.items() if math.isfinite(float(v.detach().float().mean()))
    }
