"""The training step: what an objective offers (``Objective``), what it reads (``StepContext``), and the module
that runs every objective on a micro-batch, skips those that cannot run, weights their losses and calls their
after-step hooks (``TrainModule``).

An objective is an ``nn.Module`` its builder makes from flat arguments; the step never reads its options. It
declares the (modality, view) inputs it reads and whether it accepts partial batches; it, or a part of it, may
have an ``after_optimizer_step`` hook for state outside the optimizer (the EMA teacher of BYOL, DINO, data2vec).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmssl.batch import CLEAN, Batch
from mmssl.modality import EncoderOutput, ModalityBatch, Processor
from mmssl.model import JointEmbeddingModel, zero_touching


class ModalityAbsent(KeyError):
    """The micro-batch holds no row of a modality (or view) an objective asked to encode."""


class StepContext:
    """One step's batch and model, with encodings shared between objectives.

    Two objectives that read the same (modality, view) see the same encoder pass, e.g. CLIP and SimCLR both
    reading the image ``view0``.

    Partially paired data: a micro-batch may hold no row of a modality at all (``has`` is False). No encoder can
    run on zero rows, so ``encode`` raises :class:`ModalityAbsent` then, while ``embed`` returns a zero-row
    ``[0, E]`` embedding that is still attached, with weight 0, to every parameter of the modality's encoder and
    projection (:meth:`participation`). Objectives that accept partial batches (CLIP, SigLIP:
    ``partial_rows = True``) read ``embed`` and stay in lock-step with the other processes: they make the same
    collectives with zero rows. ``TrainModule`` skips every other objective whose inputs are absent, on all
    processes at once.
    """

    def __init__(self, model: JointEmbeddingModel, batch: Batch, processors: dict[str, Processor]) -> None:
        self.model, self.batch, self.processors = model, batch, processors
        self._encoded: dict[tuple[str, str], EncoderOutput] = {}
        self._embedded: dict[tuple[str, str], Tensor] = {}

    def has(self, modality: str, view: str = CLEAN) -> bool:
        """Whether the micro-batch holds at least one row of ``modality`` (in ``view``)."""
        return view in self.batch.inputs.get(modality, {})

    def inputs(self, modality: str, view: str = CLEAN) -> ModalityBatch:
        try:
            return self.batch.inputs[modality][view]
        except KeyError:
            if modality in self.batch.present and modality not in self.batch.inputs:
                raise ModalityAbsent(f"the micro-batch has no row with modality {modality!r}") from None
            raise KeyError(f"the batch has no {view!r} view of modality {modality!r}") from None

    def provide(self, modality: str, view: str, output: EncoderOutput) -> None:
        """Use ``output`` as the encoder's output on (modality, view), e.g. one computed in chunks (GradCache)."""
        self._encoded[(modality, view)] = output

    def encode(self, modality: str, view: str = CLEAN) -> EncoderOutput:
        """The encoder's output on the rows that have ``modality``; :class:`ModalityAbsent` when there are none."""
        key = (modality, view)
        if key not in self._encoded:
            self._encoded[key] = self.model.encode(modality, self.inputs(modality, view))
        return self._encoded[key]

    def embed(self, modality: str, view: str = CLEAN) -> Tensor:
        """L2-normalised embedding in the shared space. Shapes: -> [B_m, E] (rows that have the modality).

        ``[0, E]`` when no row has the modality; it depends (with weight 0) on the modality's parameters, so a
        loss built on it gives them a (zero) gradient, as DDP needs every parameter to take part in every step.
        """
        key = (modality, view)
        if key not in self._embedded:
            if self.has(modality, view) or modality not in self.batch.present:
                self._embedded[key] = self.model.project(modality, self.encode(modality, view).pooled)
            else:
                anchor = self.participation(modality)
                self._embedded[key] = anchor.new_zeros(0, self.model.embed_dim) + anchor
        return self._embedded[key]

    def participation(self, *modalities: str) -> Tensor:
        """``0 * (sum of the parameters of the modalities' encoders and projections)``: a scalar 0 on whose graph
        every such parameter lies, so the backward pass gives each a zero gradient."""
        return self.model.participation(*modalities)

    def paired_rows(self, a: str, b: str) -> tuple[Tensor, Tensor]:
        """Positions, within each modality's own batch, of the rows that have both ``a`` and ``b``.

        Either may be empty (no row has both, or no row has one of them at all).

        Shapes: -> ([P], [P]) long indices into the [B_a] and [B_b] batches.
        """
        pa, pb = self.batch.present[a], self.batch.present[b]
        both = pa & pb
        return (pa.cumsum(0) - 1)[both], (pb.cumsum(0) - 1)[both]


@runtime_checkable
class Objective(Protocol):
    """What the training step asks of a built objective (an ``nn.Module``).

    Attributes:
        inputs: The (modality, view) pairs it reads.
        partial_rows: It runs on micro-batches that lack rows of its modalities (reading ``ctx.embed``, which
            gives zero-row embeddings then), so that its collectives stay in lock-step across processes. Without
            it the step skips the objective whenever one of its inputs has no row on some process.
    """

    inputs: Sequence[tuple[str, str]]
    partial_rows: bool

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        """Named terms, including a differentiable ``loss``."""
        ...


@runtime_checkable
class AfterStep(Protocol):
    """An objective with state outside the optimizer (an EMA teacher) updates it after each optimizer step."""

    def after_optimizer_step(self, model: JointEmbeddingModel, step: int, total_steps: int) -> None: ...


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class TrainModule(nn.Module):
    """The model and its objectives, as one module so DDP and the optimizer see every trained parameter.

    ``forward`` runs every objective on one batch and returns their named terms, prefixed with the objective's
    label, plus ``loss``: the weighted sum.

    Partially paired data (a row may lack modalities): an objective that accepts partial batches
    (``partial_rows``: CLIP, SigLIP) always runs, also with zero rows, so that its collectives stay in lock-step
    across processes. Any other objective is skipped in a step where some process has no row of one of its
    inputs (decided on all processes together); it then adds ``0 * (its parameters and those of its
    modalities)`` to the loss, so DDP still sees every parameter used, and logs no terms for that step.

    Raises:
        TypeError: An objective does not declare ``inputs`` and ``partial_rows`` (the :class:`Objective` contract).
    """

    def __init__(
        self,
        model: JointEmbeddingModel,
        objectives: dict[str, nn.Module],
        weights: dict[str, float],
        processors: dict[str, Processor],
    ) -> None:
        super().__init__()
        for label, objective in objectives.items():
            if not isinstance(objective, Objective):
                raise TypeError(
                    f"objective {label!r} ({type(objective).__name__}) must declare `inputs` and `partial_rows`"
                )
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.weights = weights
        self.processors = processors

    def contract(self, label: str) -> Objective:
        objective = self.objectives[label]
        assert isinstance(objective, Objective)
        return objective

    def forward(self, batch: Batch, encoded: dict[tuple[str, str], EncoderOutput] | None = None) -> dict[str, Tensor]:
        """Run every objective on ``batch``.

        Args:
            batch: The micro-batch.
            encoded: (modality, view) -> encoder output already computed for the whole micro-batch (GradCache,
                ``mmssl.train.grad_cache``); objectives read these instead of running the encoder.
        """
        ctx = StepContext(self.model, batch, self.processors)
        for key, output in (encoded or {}).items():
            ctx.provide(*key, output)
        skipped = self.skipped_objectives(ctx)
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None
        for label in self.objectives:
            objective = self.contract(label)
            if label in skipped:
                modalities = sorted({m for m, _ in objective.inputs})
                idle = zero_touching(self.objectives[label].parameters()) + self.model.participation(*modalities)
                total = idle if total is None else total + idle
                continue
            out = objective(ctx)
            weighted = self.weights[label] * out["loss"]
            total = weighted if total is None else total + weighted
            terms.update({f"{label}/{k}": v for k, v in out.items()})
        assert total is not None
        terms["loss"] = total
        return terms

    def skipped_objectives(self, ctx: StepContext) -> set[str]:
        """Labels of the objectives without partial-batch support that cannot run on this micro-batch: one of
        their (modality, view) inputs has no row here or on another process (one all-reduce when distributed)."""
        needs = {
            label: list(self.contract(label).inputs)
            for label in self.objectives
            if not self.contract(label).partial_rows
        }
        keys = sorted({key for inputs in needs.values() for key in inputs})
        if not keys:
            return set()
        have = [ctx.has(m, v) for m, v in keys]
        if _world_size() > 1:
            flags = torch.tensor(have, dtype=torch.int32, device=ctx.batch.index.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            have = [bool(f) for f in flags.tolist()]
        absent = {key for key, ok in zip(keys, have, strict=True) if not ok}
        return {label for label, inputs in needs.items() if absent.intersection(inputs)}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Let objectives with state outside the optimizer update after each step: every objective, or part of one
        (an :class:`~mmssl.objectives.teacher.EMATeacher`), that is an :class:`AfterStep`."""
        for module in self.objectives.modules():
            if isinstance(module, AfterStep):
                module.after_optimizer_step(self.model, step, total_steps)
