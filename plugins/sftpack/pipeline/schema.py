"""The pipeline YAML, as small dataclasses; unknown keys are errors that name the expected ones.

    name: tiny_cpu
    requires_gpu: false
    model: {path: null, build_shape: small, seed: 0}   # + tokenizer: FOLDER for the built model
    data: {family: gsm8k, source: sample}
    train:
      - {framework: llamafactory, config: train_configs/qwen_full_gsm8k.yaml, overrides: {...}}
      - {framework: swift, config: train_configs/swift/qwen_full_gsm8k.yaml, overrides: {...}}
    eval: {tasks: [gsm8k-local-chat], limit: 40, device: cpu, batch_size: "1"}

Relative paths (configs, local model/data/tokenizer folders) resolve against the repository root, not the current
directory; errors print the resolved path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack.errors import SftpackError

FRAMEWORKS = ("llamafactory", "swift")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")   # what model.tokenizer's folder must hold
# Keys the pipeline sets itself in every training command (model, output folder, token counting).
PIPELINE_KEYS = {"llamafactory": ("model_name_or_path", "output_dir", "include_num_input_tokens_seen"),
                 "swift": ("model", "output_dir", "include_num_input_tokens_seen", "add_version")}


class PipelineError(SftpackError):
    """A pipeline YAML that cannot run as written."""


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise PipelineError(f"Unknown keys in {where}: {unknown}. Expected: {known}")
    return cls(**data)


def repo_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else fw.REPO_ROOT / path


@dataclass
class ModelSpec:
    path: str | None = None           # local folder or hub id (HuggingFace, then ModelScope); None = build
    build_shape: str | None = "small"  # sftpack tiny-model --shape, used when `path` is None or cannot be had
    seed: int = 0
    download: bool = False            # try the hubs for `path` when it is not on this machine (never when offline)
    tokenizer: str | None = None      # a tokenizer folder for the built model (`sftpack tiny-model --tokenizer`)
    tokenizer_required: bool = True   # false: an absent `tokenizer` folder -> the built tokenizer, said in the report

    def __post_init__(self):
        from sftpack.tiny_model import SHAPES

        if self.path is None and self.build_shape is None:
            raise PipelineError("model: give `path` (a folder or hub id) or `build_shape` "
                                f"(one of {sorted(SHAPES)})")
        if self.build_shape is not None and self.build_shape not in SHAPES:
            raise PipelineError(f"model.build_shape {self.build_shape!r}: unknown. Expected one of {sorted(SHAPES)}")
        if self.tokenizer is not None:
            self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        if self.build_shape is None:
            raise PipelineError(f"model.tokenizer {self.tokenizer!r}: used only when the model is built; give "
                                "model.build_shape too, or remove model.tokenizer")
        folder = repo_path(self.tokenizer)
        if not folder.exists():
            if self.tokenizer_required:
                raise PipelineError(
                    f"model.tokenizer {self.tokenizer!r}: no such folder ({folder}). Write it first (e.g. the GPU "
                    "kit's prepare step), or set model.tokenizer_required: false to build with the byte-level "
                    "tokenizer instead")
            return
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            raise PipelineError(f"model.tokenizer {self.tokenizer!r}: {folder} holds no {' / '.join(missing)}; "
                                "expected a tokenizer saved by transformers' save_pretrained (Qwen2.5's own folder "
                                "has both)")

    @property
    def tokenizer_path(self) -> Path | None:
        """The resolved `tokenizer` folder when it is there; None when unset or (not required and) absent."""
        if self.tokenizer is None:
            return None
        folder = repo_path(self.tokenizer)
        return folder if folder.is_dir() else None


@dataclass
class DataSpec:
    family: str = "gsm8k"             # a converter of `sftpack prepare`
    source: str = "sample"            # "sample" = the rows shipped in the package; else a folder or hub id
    fallback_source: str | None = None  # used (and said in the report) when `source` cannot be read, e.g. no hub

    def __post_init__(self):
        from sftpack.converters import CONVERTERS

        if self.family not in CONVERTERS:
            raise PipelineError(f"data.family {self.family!r}: unknown. Expected one of {sorted(CONVERTERS)}")

    def resolved_source(self, source: str | None = None) -> str:
        source = self.source if source is None else source
        if source == "sample":
            from sftpack.samples import sample_dir

            return str(sample_dir(self.family))
        local = repo_path(source)
        return str(local) if local.exists() else source   # else a hub id


@dataclass
class TrainSpec:
    framework: str
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 3600.0

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise PipelineError(f"train.framework {self.framework!r}: unknown. Expected one of {list(FRAMEWORKS)}")
        if not self.config_path.is_file():
            raise PipelineError(f"train.config {self.config!r}: no such file ({self.config_path})")
        if not isinstance(self.overrides, dict):
            raise PipelineError(f"train.overrides of {self.framework}: expected a mapping, got {self.overrides!r}")
        owned = sorted(set(self.overrides) & set(PIPELINE_KEYS[self.framework]))
        if owned:
            raise PipelineError(f"train.overrides of {self.framework}: {owned} are set by the pipeline itself; "
                                "remove them")

    @property
    def config_path(self) -> Path:
        return repo_path(self.config)

    @property
    def stage(self) -> str:
        return f"train_{self.framework}"


@dataclass
class EvalSpec:
    tasks: list[str] = field(default_factory=lambda: ["gsm8k-local-chat"])
    limit: int | None = 40            # questions per task; None = the whole test split
    device: str = "cpu"
    batch_size: str = "1"
    dtype: str | None = None
    gen_kwargs: str | None = None     # lm-eval --gen_kwargs, e.g. "max_gen_toks=64"


@dataclass
class Pipeline:
    name: str
    model: ModelSpec
    data: DataSpec
    train: list[TrainSpec]
    eval: EvalSpec
    requires_gpu: bool = False
    description: str = ""
    path: str | None = None           # the YAML it was read from (set by load_pipeline)

    def __post_init__(self):
        names = [t.framework for t in self.train]
        if not names or len(set(names)) != len(names):
            raise PipelineError(f"train: give each framework once (of {list(FRAMEWORKS)}); got {names}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "pipeline") -> Pipeline:
        if not isinstance(data, dict):
            raise PipelineError(f"{where}: expected a mapping at the top level")
        known = ["name", "description", "requires_gpu", "model", "data", "train", "eval"]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PipelineError(f"Unknown keys in {where}: {unknown}. Expected: {known}")
        missing = [k for k in ("name", "model", "train") if k not in data]
        if missing:
            raise PipelineError(f"{where}: missing {missing}")
        train = data["train"]
        if not isinstance(train, list):
            raise PipelineError(f"{where}: train must be a list of {{framework, config, overrides}}")
        return cls(name=str(data["name"]), description=str(data.get("description", "")),
                   requires_gpu=bool(data.get("requires_gpu", False)),
                   model=_build(ModelSpec, data["model"], f"{where}: model"),
                   data=_build(DataSpec, data.get("data", {}), f"{where}: data"),
                   train=[_build(TrainSpec, t, f"{where}: train[{i}]") for i, t in enumerate(train)],
                   eval=_build(EvalSpec, data.get("eval", {}), f"{where}: eval"))


def load_pipeline(path: Path) -> Pipeline:
    import yaml

    path = Path(path).resolve()
    if not path.is_file():
        raise PipelineError(f"{path}: no such pipeline file")
    pipeline = Pipeline.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), where=str(path))
    pipeline.path = str(path)
    return pipeline
