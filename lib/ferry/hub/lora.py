"""A LoRA training folder, read as a publishing plan: which weights, which samples, the model card.

Trainers such as ai-toolkit leave in their output folder the final weights
(``my_lora.safetensors``), step checkpoints beside them
(``my_lora_000001000.safetensors``), a ``config.yaml`` and ``samples/``
named ``<timestamp>__<step>_<prompt index>.<ext>`` for every sampling round.
A published repo wants the final weights, the latest sample of each prompt
and a card that names the real weight file: this module decides all of that
from a :class:`Listing` (names, sizes and the config text), which is read
from a local folder or from an instance alike, and sends nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import FerryError, UsageError, cmd

SAMPLE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
SAMPLES_DIR = "samples"
CONFIG_FILE = "config.yaml"
# <timestamp>__<step>_<prompt index>: ai-toolkit's sample names (the extension is checked apart).
SAMPLE_NAME = re.compile(r"^(?P<ts>\d+)__(?P<step>\d+)_(?P<prompt>\d+)$")
# A step (or epoch) checkpoint: a zero-padded counter of 6+ digits at the end of the stem.
CHECKPOINT = re.compile(r"[_-]\d{6,}$")
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
README = "README.md"


@dataclass(frozen=True)
class SourceFile:
    """A file of the training folder: its path relative to the folder (posix) and its size."""

    rel: str
    size: int


@dataclass
class Listing:
    """What the plan is made from: the folder's weight and sample files, and its config.yaml text."""

    root: str  # the folder, as the user named it (local path, or a path on the instance)
    files: list[SourceFile]
    config_text: str | None = None

    @classmethod
    def local(cls, directory: str | Path) -> "Listing":
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise UsageError(f"no such directory: {directory}",
                             hint="give the training output folder: --source-dir output/my_lora")
        found = [SourceFile(p.name, p.stat().st_size) for p in sorted(root.iterdir())
                 if p.is_file() and p.name.endswith(".safetensors")]
        samples = root / SAMPLES_DIR
        if samples.is_dir():
            found += [SourceFile(f"{SAMPLES_DIR}/{p.name}", p.stat().st_size) for p in sorted(samples.iterdir())
                      if p.is_file() and p.suffix.lower() in SAMPLE_EXTS]
        config_path = root / CONFIG_FILE
        text = config_path.read_text(errors="replace") if config_path.is_file() else None
        return cls(str(directory), found, text)

    @classmethod
    def parse(cls, root: str, lines: str, config_text: str | None) -> "Listing":
        """From ``<size>\\t<relative path>`` lines (what ``find -printf '%s\\t%P'`` prints on an instance)."""
        found = []
        for line in lines.splitlines():
            size, _, rel = line.partition("\t")
            if rel and size.isdigit():
                found.append(SourceFile(rel, int(size)))
        return cls(root, sorted(found, key=lambda f: f.rel), config_text)


# -- the rules -----------------------------------------------------------------------------------------
def choose_weights(listing: Listing, wanted: str | None = None) -> SourceFile:
    """The final ``*.safetensors``: not a step checkpoint, not an index; ``wanted`` (--weights) picks by name."""
    weights = [f for f in listing.files if "/" not in f.rel and f.rel.endswith(".safetensors")]
    if wanted:
        name = PurePosixPath(wanted).name
        for candidate in weights:
            if candidate.rel == name:
                return candidate
        raise UsageError(f"{listing.root} has no weight file {wanted}",
                         hint="its .safetensors files: " + (", ".join(f.rel for f in weights) or "none"))
    finals = [f for f in weights if not CHECKPOINT.search(f.rel[:-len(".safetensors")]) and "index" not in f.rel]
    if len(finals) == 1:
        return finals[0]
    if not finals:
        if weights:
            raise FerryError(f"{listing.root} holds only step checkpoints ({', '.join(f.rel for f in weights)}), "
                             "no final weights", hint="pick one yourself: --weights FILE")
        raise UsageError(f"no .safetensors weights in {listing.root}",
                         hint="give the folder the trainer wrote its final weights to: --source-dir DIR")
    raise UsageError(f"{listing.root} holds several final weight files: {', '.join(f.rel for f in finals)}",
                     hint="pick one: --weights FILE")


def keep_samples(names: list[str]) -> list[str]:
    """The latest sample per prompt, by (step, timestamp); names not of the trainer's form are all kept.

    ``names`` are file names (or paths) of images; the result keeps their
    order: prompts by index first, then the other files by name.
    """
    latest: dict[int, tuple[tuple[int, int], str]] = {}
    others = []
    for name in names:
        path = PurePosixPath(name)
        if path.suffix.lower() not in SAMPLE_EXTS:
            continue
        match = SAMPLE_NAME.match(path.stem)
        if not match:
            others.append(name)
            continue
        key = (int(match["step"]), int(match["ts"]))
        prompt = int(match["prompt"])
        if prompt not in latest or key > latest[prompt][0]:
            latest[prompt] = (key, name)
    return [latest[p][1] for p in sorted(latest)] + sorted(others)


def prompt_index(name: str) -> int | None:
    match = SAMPLE_NAME.match(PurePosixPath(name).stem)
    return int(match["prompt"]) if match else None


def _yaml():
    try:
        import yaml
    except ImportError:  # ferry[hf] brings PyYAML; Invoke vendors a copy
        from invoke.vendor import yaml  # type: ignore[no-redef]
    return yaml


@dataclass
class TrainingConfig:
    """What the card takes from the trainer's config.yaml (``config.process[0]``)."""

    trigger: str | None = None
    prompts: list[str] = field(default_factory=list)
    base_model: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "TrainingConfig":
        if not text:
            return cls()
        try:
            data = _yaml().safe_load(text)
        except Exception:  # noqa: BLE001 - a config we cannot read only costs the card its prompts
            return cls()
        process = ((data or {}).get("config") or {}).get("process") if isinstance(data, dict) else None
        first = process[0] if isinstance(process, list) and process and isinstance(process[0], dict) else {}
        trigger = first.get("trigger_word")
        prompts = []
        for item in ((first.get("sample") or {}).get("prompts") or []):
            text_of = item.get("prompt") if isinstance(item, dict) else item
            prompts.append(str(text_of) if text_of is not None else "")
        model = (first.get("model") or {}).get("name_or_path")
        base = str(model) if isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/", "~")) \
            else None
        return cls(str(trigger) if trigger else None, prompts, base)


# -- the plan ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    file: SourceFile
    prompt: str | None


@dataclass
class Plan:
    """Everything a publish sends, decided before anything is sent (``--dry-run`` prints it)."""

    name: str
    user: str | None  # the namespace; None = the token's own user (asked at publish time)
    public: bool
    exist_ok: bool
    source: str
    weights: SourceFile
    samples: list[Sample]
    trigger: str | None
    base_model: str | None
    card: str
    skipped_checkpoints: list[str] = field(default_factory=list)
    skipped_samples: int = 0

    @property
    def repo_id(self) -> str | None:
        return f"{self.user}/{self.name}" if self.user else None

    def shown_repo(self) -> str:
        return self.repo_id or f"<your user>/{self.name}"

    @property
    def visibility(self) -> str:
        return "public" if self.public else "private"

    def uploads(self) -> list[tuple[str, str, int]]:
        """(path relative to the folder, or README.md for the card; path in the repo; size), in commit order."""
        rows = [(self.weights.rel, self.weights.rel, self.weights.size)]
        rows += [(s.file.rel, s.file.rel, s.file.size) for s in self.samples]
        rows.append((README, README, len(self.card.encode())))
        return rows

    def total_size(self) -> int:
        return sum(size for _, _, size in self.uploads())

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo_id, "name": self.name, "user": self.user, "visibility": self.visibility,
                "exist_ok": self.exist_ok, "source": self.source, "weights": self.weights.rel,
                "trigger": self.trigger, "base_model": self.base_model,
                "files": [{"path": repo_path, "size": size} for _, repo_path, size in self.uploads()],
                "total_size": self.total_size(), "skipped_checkpoints": self.skipped_checkpoints,
                "skipped_samples": self.skipped_samples}


def split_repo(repo: str, user: str | None) -> tuple[str | None, str]:
    """``--repo NAME`` or ``--repo OWNER/NAME`` with ``--user``: (namespace or None, name), checked."""
    owner, _, name = repo.rpartition("/")
    owner = owner or None
    if owner and user and owner != user:
        raise UsageError(f"--repo {repo} names the owner {owner}, but --user says {user}",
                         hint=f"give one of them: --repo {name} --user {user}")
    for part, what in ((name, "repo name"), (owner or user, "user")):
        if part is not None and not REPO_NAME.match(part):
            raise UsageError(f"bad {what} {part!r}: letters, digits, '.', '_' and '-' only (at most 96)",
                             hint="e.g. --repo my-flux-lora")
    return owner or user, name


def make_plan(listing: Listing, repo: str, *, user: str | None = None, trigger: str | None = None,
              base_model: str | None = None, public: bool = False, exist_ok: bool = False,
              weights: str | None = None) -> Plan:
    """The plan for ``listing``: the weights, the kept samples with their prompts, the card."""
    namespace, name = split_repo(repo, user)
    chosen = choose_weights(listing, weights)
    config = TrainingConfig.parse(listing.config_text)
    trigger = trigger or config.trigger
    base_model = base_model or config.base_model
    sample_files = {f.rel: f for f in listing.files if f.rel.startswith(f"{SAMPLES_DIR}/")}
    kept = keep_samples(list(sample_files))
    samples = []
    for rel in kept:
        index = prompt_index(rel)
        prompt = config.prompts[index] if index is not None and index < len(config.prompts) else None
        if prompt and trigger:
            prompt = prompt.replace("[trigger]", trigger)
        samples.append(Sample(sample_files[rel], prompt))
    checkpoints = [f.rel for f in listing.files if "/" not in f.rel and f.rel.endswith(".safetensors")
                   and f.rel != chosen.rel]
    plan = Plan(name=name, user=namespace, public=public, exist_ok=exist_ok, source=listing.root, weights=chosen,
                samples=samples, trigger=trigger, base_model=base_model, card="", skipped_checkpoints=checkpoints,
                skipped_samples=len(sample_files) - len(kept))
    plan.card = model_card(plan)
    return plan


def model_card(plan: Plan) -> str:
    """README.md: metadata the Hub reads (base model, trigger, gallery), then what a user needs to load it."""
    meta: dict[str, Any] = {"tags": ["lora", "text-to-image", "ferry"]}
    if plan.base_model:
        meta["base_model"] = plan.base_model
    if plan.trigger:
        meta["instance_prompt"] = plan.trigger
    if plan.samples:
        meta["widget"] = [{"text": s.prompt or "", "output": {"url": s.file.rel}} for s in plan.samples]
    front = _yaml().safe_dump(meta, sort_keys=True, allow_unicode=True, default_flow_style=False).strip()
    lines = ["---", front, "---", "", f"# {plan.name}", ""]
    lines.append(f"A LoRA{f' for [{plan.base_model}](https://huggingface.co/{plan.base_model})' if plan.base_model else ''}.")
    lines += ["", "## Weights", "", f"[`{plan.weights.rel}`](./{plan.weights.rel})", ""]
    if plan.trigger:
        lines += ["## Trigger word", "", f"Use `{plan.trigger}` in the prompt to trigger the trained concept.", ""]
    else:
        lines += ["## Trigger word", "", "None was set for this training.", ""]
    if plan.samples:
        lines += ["## Samples", ""]
        for sample in plan.samples:
            caption = sample.prompt or PurePosixPath(sample.file.rel).name
            lines += [f"![{_alt(caption)}](./{sample.file.rel})", "", f"*{_alt(caption)}*" if sample.prompt else "", ""]
    repo = plan.repo_id or f"<user>/{plan.name}"
    lines += ["## Use it", "", "```python", "from diffusers import DiffusionPipeline", "",
              f"pipe = DiffusionPipeline.from_pretrained({plan.base_model or '<base model>'!r})",
              f"pipe.load_lora_weights({repo!r}, weight_name={plan.weights.rel!r})", "```", "",
              f"Published with ferry (`{cmd('hf.publish-lora')}`).", ""]
    return "\n".join(line for i, line in enumerate(lines) if not (line == "" and i and lines[i - 1] == ""))


def _alt(text: str) -> str:
    return " ".join(text.replace("[", "(").replace("]", ")").replace("*", "").split())
