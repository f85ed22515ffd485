"""Pretrained checkpoints shipped inside the package, addressable by name.

Each shipped model is a folder ``brainlm/checkpoints/pretrained/NAME/`` holding::

    model/            an ordinary checkpoint folder (see :mod:`brainlm.checkpoints.folder`)
    card.json         its model card: what it was trained on, how, its scores and its limits
    MODEL_CARD.md     the same card for people
    training_log.csv  validation metrics per epoch of the run that made it

Wherever a checkpoint folder is accepted, a shipped model's name is accepted too
(``brainlm networks hcp-small DATA``, ``brainlm.load("hcp-small")``). A folder of that name in
the working directory wins over the shipped model: an explicit path is never reinterpreted.
So is a Hugging Face Hub id, ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` (:mod:`brainlm.checkpoints.hub`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.hub import is_hub_id, resolve_hub_checkpoint

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
CARD = "card.json"


@dataclass(frozen=True)
class ShippedModel:
    """A checkpoint that comes with the package: ``path`` is its checkpoint folder, ``card`` the
    content of its ``card.json``."""

    name: str
    path: Path
    card: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), **{k: v for k, v in self.card.items() if k != "name"}}


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, sorted by name (a folder without a card or checkpoint is not one)."""
    models = []
    if SHIPPED_DIR.is_dir():
        for folder in sorted(SHIPPED_DIR.iterdir()):
            card = folder / CARD
            if card.is_file() and (folder / "model" / "config.json").is_file():
                models.append(ShippedModel(folder.name, folder / "model", json.loads(card.read_text())))
    return models


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint folder that ``checkpoint`` names: the path itself when it exists, the
    fetched (or converted, see :func:`brainlm.checkpoints.hub.resolve_hub_checkpoint`) folder of an
    ``hf://`` Hub id, else the shipped model of that name.

    Raises
    ------
    BrainLMInputError
        Neither a folder, a Hub id nor a shipped model's name (the message lists the names); a
        Hub id that cannot be fetched (the message says what to do).
    """
    if is_hub_id(checkpoint):
        return resolve_hub_checkpoint(checkpoint)
    path = Path(checkpoint)
    if path.exists():
        return path
    for model in shipped_models():
        if str(checkpoint) == model.name:
            return model.path
    names = ", ".join(m.name for m in shipped_models()) or "none"
    raise BrainLMInputError(f"checkpoint folder not found, and not the name of a shipped model "
                            f"(shipped: {names}; `brainlm models` lists them), nor a Hub id "
                            "(hf://ORG/REPO[/SUBFOLDER])", str(checkpoint))
