"""Supervised fine-tuning and linear probing of one encoder on a labelled manifest (``mmssl finetune``).

The encoder comes from an mmssl run folder (its trained weights and fitted processor) or from a recipe file
(a released encoder named in ``modalities.<m>.encoder``, or a fresh random init of the plugin's own encoder,
with the processor fitted on the training manifest). Two modes:

* ``probe``: the encoder is frozen; every row is embedded once (the encoder's pooled output) and a linear head
  on standardised features is trained with AdamW (cross-entropy, or MSE on standardised targets).
* ``full``: encoder and head train end to end on the processor's ``prepare`` inputs (or ``augment`` views), the
  encoder at a lower learning rate, optionally with layer-wise decay.

The epoch is picked on a validation split held out of the training manifest; the test manifest is scored once,
with the weights of that epoch, and the metrics go to ``eval.json``.

Modules: ``config`` (settings), ``data`` (manifests, labels, validation split), ``encoder`` (loading, embedding),
``head`` (the linear head), ``loop`` (training), ``metrics`` (test scores), ``run`` (``finetune()``, outputs).
"""

from mmssl.finetune.config import COLUMN_KINDS, DEFAULTS, MODES, TASKS, FinetuneConfig, FinetuneError
from mmssl.finetune.data import LabelledRows, Targets, encode_labels, read_labelled, validation_split
from mmssl.finetune.encoder import embed, encoder_kind, load_encoder, recipe_column
from mmssl.finetune.head import LinearHead
from mmssl.finetune.loop import fit_full, fit_probe, train_epochs
from mmssl.finetune.metrics import classification_metrics, regression_metrics
from mmssl.finetune.run import FinetuneResult, finetune

__all__ = [
    "COLUMN_KINDS",
    "DEFAULTS",
    "MODES",
    "TASKS",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "LabelledRows",
    "LinearHead",
    "Targets",
    "classification_metrics",
    "embed",
    "encode_labels",
    "encoder_kind",
    "finetune",
    "fit_full",
    "fit_probe",
    "load_encoder",
    "read_labelled",
    "recipe_column",
    "regression_metrics",
    "train_epochs",
    "validation_split",
]
