"""The registry mechanism: typed entries declared by name, resolved against their option schemas. No torch.

An entry carries its name, a one-line description, the import path of its implementation
("module:attr", imported only where a trial or a stage runs, so a CPU head node validates and
plans without torch), an option schema, and the typed facts the driver needs about it (what a
selector reads, what a regime needs, ...). The declarations themselves are in `workers.catalogue`;
how entries turn into artifacts is `workers.graph`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from workers.config import Named
from workers.options import Option, did_you_mean, resolve

if TYPE_CHECKING:
    from workers.config import TrialConfig

# A rule that looks at a whole trial (e.g. a pool that must hold ipc x factor^2 images): a message or None.
TrialRule = Callable[[Named, "TrialConfig"], "str | None"]


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    impl: str
    options: Mapping[str, Option] = field(default_factory=dict)

    def load(self) -> Any:
        """Import and return the implementation (may import torch)."""
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)

    def resolve(self, given: Mapping[str, Any] | None, path: str) -> tuple[dict[str, Any], list[str]]:
        """Fill defaults and validate user options. Returns (resolved options, problems)."""
        return resolve(self.options, given, path, repr(self.name))


@dataclass(frozen=True)
class DatasetEntry(Entry):
    describe: str = ""  # "module:attr" of a torch-free function (root, **options) -> facts for validation
    needs_root: bool = False
    cached: bool = False  # decoded once into a `cache` artifact (sharded) that its readers depend on
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # fills options that default to others
    root_doc: str = "the folder that holds train/ and val/"  # what `dataset.root` must point at

    def facts(self, root: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
        """class_names, train_class_sizes, num_train, image_shape: read without torch."""
        module, _, attr = self.describe.partition(":")
        return getattr(importlib.import_module(module), attr)(root=root, **options)


@dataclass(frozen=True)
class RegimeEntry(Entry):
    needs_teacher: bool = False
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the regime's default student recipe


# Inputs a selector may read: teacher penultimate features, the teacher itself, full-data score runs.
INPUTS = ("features", "teacher", "dynamics")


@dataclass(frozen=True)
class SelectorEntry(Entry):
    inputs: tuple[str, ...] = ()
    score_epochs: Callable[[TrialConfig], int] | None = None  # length of its score runs (inputs has dynamics)
    # Extra fields of its score runs' artifact keys, only where they differ from a plain run (a learning-rate
    # schedule longer than the run, records beyond the standard ones): {} keeps the keys of plain runs.
    score_run: Callable[[TrialConfig], dict[str, Any]] | None = None
    balanced: bool = True  # exactly IPC per class (every selector but `full`)
    distiller: bool = False  # synthesises images instead of choosing real ones
    validate: TrialRule | None = None  # an error before launch
    advise: TrialRule | None = None  # a warning before launch
    # How the subset depends on the trial seed (workers.catalogue.seed_use): "draw" (a seeded draw picks it),
    # "ties" (only equal scores are ordered by the seed), "none"; or a function of the selector's options.
    seed_use: str | Callable[[Named], str] = "draw"

    def __post_init__(self) -> None:
        unknown = set(self.inputs) - set(INPUTS)
        if unknown:
            raise ValueError(f"selector {self.name}: unknown inputs {sorted(unknown)}; known: {INPUTS}")
        if ("dynamics" in self.inputs) != (self.score_epochs is not None):
            raise ValueError(f"selector {self.name}: score_epochs is required exactly when it reads dynamics")
        if isinstance(self.seed_use, str) and self.seed_use not in ("draw", "ties", "none"):
            raise ValueError(f"selector {self.name}: seed_use {self.seed_use!r} is not draw, ties or none")

    def score_runs(self, trial: TrialConfig) -> int:
        """Independent score runs averaged (the `runs` option where the method has one)."""
        return int(trial.selector.opts.get("runs", 1))


@dataclass(frozen=True)
class StageEntry(Entry):
    uses_accelerator: bool = True  # trains or runs a network: gets the trial's GPU
    cpus: float | None = None  # CPUs of its task; None: the trial's cpus_per_trial
    # a long training run: epoch checkpoints it resumes from, and data-parallel on Ray Train with
    # resources.stage_workers > 1 (its builder takes `dist` and `checkpoint`: workers.distributed)
    data_parallel: bool = False


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    def __init__(self, kind: str, entry_type: type[E]) -> None:
        self.kind = kind
        self.entry_type = entry_type
        self._entries: dict[str, E] = {}

    def declare(
        self, name: str, description: str, impl: str, options: Mapping[str, Option] | None = None, **facts: Any
    ) -> E:
        """Declare an entry; `facts` are the entry type's fields (a misspelt one is a TypeError at import)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} declared twice")
        entry = self.entry_type(name, description, impl, dict(options or {}), **facts)
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[E]:
        return list(self._entries.values())

    def unknown(self, name: Any) -> str:
        """The message for a name that is not declared (without the YAML path)."""
        return (
            f"{name!r} is not a known {self.kind}{did_you_mean(name, self._entries)}; "
            f"choose one of {', '.join(self._entries)}"
        )
