"""Checkpoints named by a Hugging Face Hub id, fetched with ``huggingface_hub``.

A Hub id names a folder of a model repository on the Hub, at a revision::

    hf://ORG/REPO                    the repository's top folder, branch main
    hf://ORG/REPO/SUBFOLDER          a subfolder (e.g. hf://vandijklab/brainlm/old_13M)
    hf://ORG/REPO@REVISION/SUBFOLDER a branch, tag or commit (the ``hf://`` convention of
                                     huggingface_hub's file system)

:func:`fetch` downloads only that folder's checkpoint files, through
:func:`huggingface_hub.snapshot_download` with ``allow_patterns``: it reads ``HF_HOME`` /
``HF_HUB_CACHE`` for the cache, works from the cache alone with ``HF_HUB_OFFLINE=1``, and
keeps one snapshot per commit. Nothing here writes a downloader.

The folder may hold a brainlm checkpoint (:mod:`brainlm.checkpoints.folder`), which loads as it
is, or an original BrainLM checkpoint (a ``transformers`` config with a ``model_type``), which
is converted once per commit by :func:`brainlm.checkpoints.upstream_import.import_from_hub` into
:func:`converted_folder` and reused from there. :func:`resolve_hub_checkpoint` is what every
``CHECKPOINT`` argument does with an ``hf://`` id (through
:func:`brainlm.checkpoints.shipped.resolve_checkpoint`): a brainlm checkpoint, or an original one
already converted with the default settings.

Every failure (no such repository or revision, no such subfolder, offline with nothing cached)
is one :class:`BrainLMInputError` line that says what to do.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from brainlm.errors import BrainLMInputError

__all__ = ["DEFAULT_SETTINGS", "HUB_PREFIX", "HubId", "HubSnapshot", "KNOWN_LICENCES", "cache_root", "converted_folder", "fetch",
           "is_hub_id", "is_upstream_config", "parse_hub_id", "resolve_hub_checkpoint"]

HUB_PREFIX = "hf://"
#: Files fetched from the named folder: configs, weights and tables (a brainlm checkpoint is JSON
#: and safetensors; an original one adds ``pytorch_model.bin`` when it has no safetensors).
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "pytorch_model.bin")
#: Licences of repositories whose model card does not state one in its metadata; the model card's
#: ``license:`` wins when present.
KNOWN_LICENCES = {"vandijklab/brainlm": "cc-by-nc-nd-4.0"}
#: Readable names of the licence identifiers the Hub uses.
LICENCE_NAMES = {"cc-by-nc-nd-4.0": "CC BY-NC-ND 4.0 (attribution, non-commercial, no derivatives: "
                 "keep converted weights for your own use, never redistribute them)"}

#: The :func:`converted_folder` key of a conversion with ``brainlm import-upstream``'s default
#: options (the one an ``hf://`` id of an original checkpoint resolves to).
DEFAULT_SETTINGS = "default"

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubId:
    """A folder of a Hub model repository at a revision.

    Attributes
    ----------
    repo_id : str
        ``ORG/REPO``.
    subfolder : str
        Path inside the repository (``""``: its top folder).
    revision : str or None
        Branch, tag or commit (None: ``main``).
    """

    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{rev}" + (f"/{self.subfolder}" if self.subfolder else "")


@dataclass(frozen=True)
class HubSnapshot:
    """A fetched folder: ``path`` holds its files (inside the Hub cache's snapshot of
    ``commit``); ``licence`` is the repository's licence identifier (None when unknown)."""

    hub_id: HubId
    path: Path
    commit: str
    licence: str | None

    @property
    def licence_text(self) -> str:
        """The licence for people (``unknown: read the repository's model card`` when unknown)."""
        if self.licence is None:
            return "unknown: read the repository's model card before using the weights"
        return LICENCE_NAMES.get(self.licence, self.licence)


def is_hub_id(text) -> bool:
    """Whether ``text`` is written as a Hub id (``hf://...``)."""
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_id(text: str, *, subfolder: str | None = None, revision: str | None = None) -> HubId:
    """The :class:`HubId` that ``text`` names: ``hf://ORG/REPO[@REV][/SUB]`` or a bare
    ``ORG/REPO`` (as ``brainlm import-upstream`` takes it). ``subfolder`` and ``revision``
    (the ``--subfolder`` and ``--revision`` options) may be given here instead of in ``text``,
    not both."""
    body = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2:
        raise BrainLMInputError("not a Hugging Face Hub id; expected hf://ORG/REPO[@REVISION][/SUBFOLDER] "
                                "(e.g. hf://vandijklab/brainlm/old_13M)", text)
    org, repo = parts[0], parts[1]
    rev = None
    if "@" in repo:
        repo, rev = repo.split("@", 1)
    repo_id = f"{org}/{repo}"
    if not _REPO.match(repo_id) or rev == "" or ".." in parts:
        raise BrainLMInputError("not a Hugging Face Hub id; expected hf://ORG/REPO[@REVISION][/SUBFOLDER] "
                                "(letters, digits, '-', '_' and '.')", text)
    sub = "/".join(parts[2:])
    if subfolder:
        if sub:
            raise BrainLMInputError(f"names subfolder {sub!r} and --subfolder {subfolder!r}; give one", text)
        sub = subfolder.strip("/")
    if revision:
        if rev:
            raise BrainLMInputError(f"names revision {rev!r} and --revision {revision!r}; give one", text)
        rev = revision
    return HubId(repo_id, sub, rev)


def _hub_error(hub_id: HubId, error: Exception) -> BrainLMInputError:
    """One line for a failed ``snapshot_download``, saying what to do."""
    from huggingface_hub import errors

    where = str(hub_id)
    if isinstance(error, errors.RevisionNotFoundError):
        return BrainLMInputError(f"revision {hub_id.revision!r} does not exist in {hub_id.repo_id}; pass a "
                                 "branch, tag or commit of the repository (--revision)", where)
    if isinstance(error, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return BrainLMInputError(f"no model repository {hub_id.repo_id!r} on the Hub (or it is private or "
                                 "gated: log in with `hf auth login`); check the id", where)
    if isinstance(error, errors.LocalEntryNotFoundError):
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        return BrainLMInputError(
            f"not in the Hugging Face cache and the Hub cannot be reached{offline}; download it once "
            f"with network access (`hf download {hub_id.repo_id}"
            + (f" --include '{hub_id.subfolder}/*'" if hub_id.subfolder else "")
            + (f" --revision {hub_id.revision}" if hub_id.revision else "")
            + "`), or point HF_HOME at the cache that holds it", where)
    return BrainLMInputError(f"could not fetch it from the Hub ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]})", where)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch(hub_id: HubId) -> HubSnapshot:
    """Download (or find in the cache) the checkpoint files of ``hub_id``'s folder and the
    repository's model card.

    Raises
    ------
    BrainLMInputError
        No such repository or revision; nothing cached while offline; no ``config.json`` in
        the subfolder (the message lists the folders of the snapshot that have one).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    prefix = f"{hub_id.subfolder}/" if hub_id.subfolder else ""
    patterns = [prefix + p for p in CHECKPOINT_PATTERNS] + ["README.md"]
    try:
        root = Path(snapshot_download(hub_id.repo_id, revision=hub_id.revision, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise _hub_error(hub_id, e) from None
    folder = root / hub_id.subfolder if hub_id.subfolder else root
    if not (folder / "config.json").is_file():
        found = sorted(str(p.parent.relative_to(root)) for p in root.rglob("config.json"))
        found = [f for f in found if f != "."] + (["(top folder)"] if (root / "config.json").is_file() else [])
        raise BrainLMInputError(
            f"{hub_id.repo_id} has no checkpoint (config.json) in "
            + (f"subfolder {hub_id.subfolder!r}" if hub_id.subfolder else "its top folder")
            + (f"; folders with one: {', '.join(found)}" if found else "")
            + "; name one with --subfolder or hf://ORG/REPO/SUBFOLDER", str(hub_id))
    return HubSnapshot(hub_id, folder, root.name, _licence(root, hub_id.repo_id))


def _licence(root: Path, repo_id: str) -> str | None:
    """The ``license:`` of the model card's metadata (its YAML header), else :data:`KNOWN_LICENCES`."""
    card = root / "README.md"
    if card.is_file():
        text = card.read_text(errors="replace")
        if text.startswith("---"):
            header = text.split("---", 2)[1] if text.count("---") >= 2 else ""
            m = re.search(r"^license:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", header, re.MULTILINE)
            if m:
                return m.group(1).strip()
    return KNOWN_LICENCES.get(repo_id)


def is_upstream_config(folder: Path) -> bool:
    """Whether ``folder/config.json`` is an original BrainLM (``transformers``) config, which
    has a ``model_type``, rather than a brainlm checkpoint's."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg


def cache_root() -> Path:
    """Where converted checkpoints are kept: ``$BRAINLM_CACHE``, else ``brainlm/`` in the Hugging
    Face home (``$HF_HOME``, by default ``~/.cache/huggingface``)."""
    from huggingface_hub import constants

    env = os.environ.get("BRAINLM_CACHE")
    return Path(env).expanduser() if env else Path(constants.HF_HOME).expanduser() / "brainlm"


def converted_folder(snapshot: HubSnapshot, settings: str) -> Path:
    """The checkpoint folder that a conversion of ``snapshot`` with ``settings`` (a short key of
    the import options) is kept in: one per repository, commit, subfolder and settings."""
    org, repo = snapshot.hub_id.repo_id.split("/")
    sub = snapshot.hub_id.subfolder.replace("/", "--") or "_top"
    return cache_root() / "converted" / f"models--{org}--{repo}" / snapshot.commit / sub / settings


def resolve_hub_checkpoint(text: str) -> Path:
    """The checkpoint folder an ``hf://`` id names, for every ``CHECKPOINT`` argument: the
    fetched folder of a brainlm checkpoint, or the conversion of an original BrainLM checkpoint
    with the default import settings (:data:`DEFAULT_SETTINGS`), which must have been made once
    (``brainlm import-upstream`` or ``brainlm.load``)."""
    hub_id = parse_hub_id(text)
    snapshot = fetch(hub_id)
    if not is_upstream_config(snapshot.path):
        return snapshot.path
    converted = converted_folder(snapshot, DEFAULT_SETTINGS)
    if (converted / "config.json").is_file():
        return converted
    cmd = f"brainlm import-upstream {hub_id.repo_id}" + (f" --subfolder {hub_id.subfolder}" if hub_id.subfolder else "") \
        + (f" --revision {hub_id.revision}" if hub_id.revision else "")
    raise BrainLMInputError(f"an original BrainLM checkpoint, not converted yet: run `{cmd}` once (the "
                            f"conversion is cached per revision), or brainlm.load({text!r}) in Python", text)
