"""Model discovery: Essentia ``<name>.json`` with ``<name>.pb`` and/or ``<name>.onnx`` →
backbones and heads (docs/ARCHITECTURE.md §4).

Only JSON files are parsed and model files hashed (nothing is loaded), so discovery is cheap
enough for a sensor tick. A broken model becomes a :class:`ModelProblem` and never hides the
models that work. A backbone whose JSON has ``classes`` and a ``predictions`` output is an
auto-tagging model: also a head of its own, fed by the same backbone pass.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from nomarr_pipeline.ml.validation import head_problem

HEAD_ALGORITHM = "TensorflowPredict2D"


@dataclass(frozen=True)
class BackboneFamily:
    """What the pipeline knows about one Essentia embedding algorithm."""

    family: str
    algorithm: str
    embedding_output: str
    embedding_size: int
    # The algorithm's default input node (used when the JSON names none).
    default_input: str
    # Whether its own predictions can come out of the embeddings pass (see ml.backbone_pass).
    one_pass_predictions: bool


BACKBONE_FAMILIES: dict[str, BackboneFamily] = {
    family.algorithm: family
    for family in (
        BackboneFamily("effnet", "TensorflowPredictEffnetDiscogs", "PartitionedCall:1", 1280,
                       "serving_default_melspectrogram", True),
        BackboneFamily("musicnn", "TensorflowPredictMusiCNN", "model/dense/BiasAdd", 200,
                       "model/Placeholder", True),
        BackboneFamily("vggish", "TensorflowPredictVGGish", "model/vggish/embeddings", 128,
                       "model/Placeholder", False),
    )
}

# Dagster partition keys must stay unambiguous in key ranges, lists and URLs.
_FORBIDDEN_KEY_CHARS = re.compile(r"[/,|\[\]\s]")


class HeadKind(StrEnum):
    SOFTMAX = "softmax"  # mutually exclusive classes (mood_happy: happy / non_happy)
    SIGMOID = "sigmoid"  # multi-label, independent activations (mtg_jamendo_moodtheme)
    REGRESSION = "regression"  # unbounded values through model/Identity
    PARTITIONED = "partitioned"  # genre_discogs400 style: serving_default_* → PartitionedCall


@dataclass(frozen=True)
class Backbone:
    """An embedding model: run once per file, its patch embeddings feed every head."""

    name: str  # file stem, e.g. "discogs-effnet-bs64-1"
    family: str
    algorithm: str
    graph_path: Path
    metadata_path: Path
    input_node: str  # from the JSON, else the Essentia algorithm's default
    embedding_output: str
    embedding_size: int
    version: int
    # Its own tag activations when it is an auto-tagging model with a usable head.
    predictions_output: str | None = None

    @property
    def engine(self) -> str:
        return engine_of(self.graph_path)


@dataclass(frozen=True)
class Head:
    """A classifier/regressor on top of one backbone's embeddings; one Dagster partition. An
    ``autotagging`` head is its backbone's own predictions output, with the backbone's files."""

    name: str  # file stem, e.g. "mood_happy-discogs-effnet-1"
    head_name: str
    embedding_tag: str
    model_key: str
    labels: tuple[str, ...]
    version: int
    kind: HeadKind
    graph_path: Path
    metadata_path: Path
    input_node: str
    output_node: str
    backbone: Backbone
    tagger_version: str
    autotagging: bool = False

    @property
    def partition_key(self) -> str:
        return head_partition_key(self.model_key, self.head_name)

    @property
    def engine(self) -> str:
        return engine_of(self.graph_path)

    @property
    def engines(self) -> str:
        """``onnx``, ``tensorflow`` or ``onnx+tensorflow``: its backbone's and its own engine."""
        return "+".join(sorted({self.backbone.engine, self.engine}))


@dataclass(frozen=True)
class ModelProblem:
    """A model file that cannot be used, why, and what to do (shown, never raised)."""

    path: Path
    message: str
    fix: str = ""
    head_key: str | None = None  # of a head that cannot run (ml.validation): a run names it and fails


@dataclass(frozen=True)
class ModelCatalog:
    backbones: tuple[Backbone, ...] = ()
    heads: tuple[Head, ...] = ()
    problems: tuple[ModelProblem, ...] = ()
    _by_key: Mapping[str, Head] = field(default_factory=dict, repr=False, compare=False)

    @property
    def partition_keys(self) -> list[str]:
        return sorted(head.partition_key for head in self.heads)

    def head(self, partition_key: str) -> Head | None:
        return self._by_key.get(partition_key)

    def select(self, partition_keys: Iterable[str]) -> tuple[list[Head], list[str]]:
        """Heads for these keys, and the keys that name no usable head."""
        keys = list(partition_keys)
        found = [self._by_key[key] for key in keys if key in self._by_key]
        return found, [key for key in keys if key not in self._by_key]


class ModelMetadataError(ValueError):
    """Why one model's metadata cannot be used, and what to do about it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def _problem(path: Path, exc: ModelMetadataError, suffix: str = "") -> ModelProblem:
    refetch = (f"replace it with Essentia's original: delete {path.stem}.pb and {path.stem}.json, "
               f"then `nomarr-pipeline models fetch {path.stem}`")
    return ModelProblem(path, f"{exc}{suffix}", exc.fix or refetch)


def engine_of(graph_path: Path) -> str:
    """The engine that runs this model file: ``onnx`` or ``tensorflow``."""
    return "onnx" if graph_path.suffix == ".onnx" else "tensorflow"


def head_partition_key(model_key: str, head_name: str) -> str:
    """The ``heads`` partition key of one head, ``"{model_key}:{head_name}"`` (docs/ARCHITECTURE.md §9)."""
    return f"{model_key}:{head_name}"


def partition_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a Dagster partition key, or None."""
    if not key or key != key.strip():
        return f"partition key {key!r} is empty or has surrounding spaces"
    bad = sorted(set(_FORBIDDEN_KEY_CHARS.findall(key)))
    if bad:
        return f"partition key {key!r} contains forbidden characters {bad}"
    return None


def discover_models(
    models_dir: Path, *, compute_versions: bool = True, engine: str | None = None
) -> ModelCatalog:
    """Every usable backbone and head under ``models_dir`` (recursive) plus the problems.

    ``compute_versions=False`` leaves ``tagger_version`` empty (no model bytes hashed: enough
    for partition keys). ``engine``, default ``NOMARR_INFERENCE_ENGINE``, picks each model's file.
    """
    if engine is None:
        from nomarr_pipeline.settings import inference_engine

        engine = inference_engine()
    if not models_dir.is_dir():
        return ModelCatalog(
            problems=(ModelProblem(
                models_dir, "models directory does not exist",
                "set NOMARR_MODELS_DIR to your models folder, or create it and run "
                "`nomarr-pipeline models fetch --recommended`"),)
        )
    problems: list[ModelProblem] = []
    backbones: dict[str, Backbone] = {}
    backbone_metadata: dict[str, dict[str, Any]] = {}
    head_entries: list[tuple[Path, Path, dict[str, Any]]] = []

    for metadata_path in _model_pairs(models_dir, problems):
        try:
            metadata = _read_metadata(metadata_path)
            if _is_head(metadata):
                head_entries.append((metadata_path, _weights(metadata_path, engine, True), metadata))
                continue
            algorithm = BACKBONE_FAMILIES.get(str(_inference(metadata).get("algorithm")))
            graph_path = _weights(metadata_path, engine, algorithm is None or algorithm.one_pass_predictions)
            backbone = _parse_backbone(metadata_path, graph_path, metadata)
        except ModelMetadataError as exc:
            problems.append(_problem(metadata_path, exc))
            continue
        if backbone.name in backbones:
            problems.append(_duplicate(metadata_path, backbones[backbone.name]))
            continue
        backbones[backbone.name] = backbone
        backbone_metadata[backbone.name] = metadata

    heads: dict[str, Head] = {}
    # Own heads first: they decide whether a backbone's pass also fetches its predictions,
    # and the heads parsed below must refer to that final Backbone.
    for name, metadata in backbone_metadata.items():
        try:
            own = _autotagging_head(backbones[name], metadata, compute_versions)
        except ModelMetadataError as exc:
            problems.append(_problem(backbones[name].metadata_path, exc,
                                     "; it still serves as a backbone"))
            continue
        if own is not None:
            backbones[name] = own.backbone
            heads[own.partition_key] = own
    for metadata_path, graph_path, metadata in head_entries:
        try:
            head = _parse_head(metadata_path, graph_path, metadata, backbones, compute_versions)
        except ModelMetadataError as exc:
            problems.append(_problem(metadata_path, exc))
            continue
        if head.partition_key in heads:
            problems.append(_duplicate(metadata_path, heads[head.partition_key]))
            continue
        heads[head.partition_key] = head

    for key, head in list(heads.items()):
        if problem := head_problem(head):
            del heads[key]
            problems.append(ModelProblem(
                head.metadata_path, f"cannot run: {problem}",
                f"replace or remove the model (`nomarr-pipeline models fetch {head.name}`); "
                "it is checked again once its files change", head_key=key))
    return ModelCatalog(
        backbones=tuple(backbones[name] for name in sorted(backbones)),
        heads=tuple(heads[key] for key in sorted(heads)),
        problems=tuple(sorted(problems, key=lambda p: str(p.path))),
        _by_key=dict(heads),
    )


def _duplicate(path: Path, first: Backbone | Head) -> ModelProblem:
    return ModelProblem(path, f"duplicate of {first.metadata_path} (same name); this copy is ignored",
                        "delete one of the two copies")


MODEL_SUFFIXES = (".pb", ".onnx")


def _model_pairs(models_dir: Path, problems: list[ModelProblem]) -> list[Path]:
    """The metadata files that have a model file beside them."""
    pairs: list[Path] = []
    for metadata_path in sorted(models_dir.rglob("*.json")):
        if any(metadata_path.with_suffix(suffix).is_file() for suffix in MODEL_SUFFIXES):
            pairs.append(metadata_path)
        else:
            problems.append(ModelProblem(
                metadata_path, f"model file {metadata_path.stem}.pb (or .onnx) is missing",
                f"`nomarr-pipeline models fetch {metadata_path.stem}`, or delete {metadata_path.name}"))
    for graph_path in sorted(p for suffix in MODEL_SUFFIXES for p in models_dir.rglob(f"*{suffix}")):
        if not graph_path.with_suffix(".json").is_file():
            problems.append(ModelProblem(
                graph_path, f"metadata {graph_path.stem}.json is missing",
                f"`nomarr-pipeline models fetch {graph_path.stem}`, or delete {graph_path.name}"))
    return pairs


def _weights(metadata_path: Path, engine: str, onnx_capable: bool) -> Path:
    """The model file ``engine`` runs; for ``auto`` the ``.onnx`` where it can run, else the ``.pb``."""
    pb, onnx = metadata_path.with_suffix(".pb"), metadata_path.with_suffix(".onnx")
    if engine == "tensorflow" or (engine == "auto" and (not onnx_capable or not onnx.is_file())):
        if pb.is_file():
            return pb
        raise ModelMetadataError(
            f"it has no {pb.name} for TensorFlow"
            + ("" if onnx_capable else " (its family runs on TensorFlow only)"),
            f"`nomarr-pipeline models fetch {pb.stem}`, or set NOMARR_INFERENCE_ENGINE=auto",
        )
    if not onnx_capable:
        raise ModelMetadataError("its family runs on TensorFlow only, not on ONNX Runtime",
                                 "set NOMARR_INFERENCE_ENGINE=auto")
    if onnx.is_file():
        return onnx
    raise ModelMetadataError(f"it has no {onnx.name} for ONNX Runtime",
                             "set NOMARR_INFERENCE_ENGINE=auto to run its .pb on TensorFlow")


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelMetadataError(f"unreadable model metadata: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelMetadataError("model metadata is not a JSON object")
    return metadata


def _inference(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    inference = metadata.get("inference") or {}
    if not isinstance(inference, Mapping):
        raise ModelMetadataError("'inference' is not an object")
    return inference


def _is_head(metadata: Mapping[str, Any]) -> bool:
    inference = metadata.get("inference")
    if not isinstance(inference, Mapping):
        return False
    return inference.get("algorithm") == HEAD_ALGORITHM or "embedding_model" in inference


def _version(metadata: Mapping[str, Any]) -> int:
    raw = metadata.get("version", 1)
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise ModelMetadataError(f"'version' {raw!r} is not an integer") from None
    if version < 0:
        raise ModelMetadataError(f"'version' {version} is negative")
    return version


def _schema_nodes(metadata: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    schema = metadata.get("schema") or {}
    nodes = schema.get(section) if isinstance(schema, Mapping) else None
    if nodes is None:
        return []
    if not isinstance(nodes, list) or not all(
        isinstance(node, Mapping) and isinstance(node.get("name"), str) for node in nodes
    ):
        raise ModelMetadataError(f"'schema.{section}' must be a list of objects with a name")
    return nodes


def last_int_dim(node: Mapping[str, Any]) -> int | None:
    """The last dimension of a JSON schema node's ``shape`` when it is a number."""
    shape = node.get("shape")
    if isinstance(shape, list) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _parse_backbone(
    metadata_path: Path, graph_path: Path, metadata: Mapping[str, Any]
) -> Backbone:
    algorithm = _inference(metadata).get("algorithm")
    known = BACKBONE_FAMILIES.get(str(algorithm))
    if known is None:
        supported = ", ".join(sorted(BACKBONE_FAMILIES))
        raise ModelMetadataError(
            f"unsupported backbone algorithm {algorithm!r} (supported: {supported})",
            "remove it from the models folder; its heads cannot run either",
        )
    inputs = _schema_nodes(metadata, "inputs")
    return Backbone(
        name=graph_path.stem,
        family=known.family,
        algorithm=known.algorithm,
        graph_path=graph_path,
        metadata_path=metadata_path,
        input_node=str(inputs[0]["name"]) if inputs else known.default_input,
        embedding_output=known.embedding_output,
        embedding_size=known.embedding_size,
        version=_version(metadata),
    )


_VERSION_SUFFIX = re.compile(r"-\d+$")


def autotagging_head_name(backbone_name: str) -> str | None:
    """An auto-tagging model's own ``head_name``: its file name without the version
    (``msd-musicnn-1`` → ``msd-musicnn``), or None when that has no ``-``. A classifier head's
    name never has one: the ``-`` tells an auto-tagging head apart (mood tiers exclude them by it).
    """
    name = _VERSION_SUFFIX.sub("", backbone_name)
    if "-" not in name:
        name = backbone_name
    return name if "-" in name else None


def _predictions_node(metadata: Mapping[str, Any], or_only_output: bool = False) -> Mapping[str, Any] | None:
    outputs = _schema_nodes(metadata, "outputs")
    for node in outputs:
        if node.get("output_purpose") == "predictions":
            return node
    return outputs[0] if or_only_output and len(outputs) == 1 else None


def _autotagging_head(
    backbone: Backbone, metadata: Mapping[str, Any], compute_versions: bool
) -> Head | None:
    """The backbone's own head, None for a pure feature extractor; raises why it cannot be one."""
    classes = metadata.get("classes")
    output = _predictions_node(metadata)
    if not classes or output is None:
        return None
    labels = _labels(classes)
    if not BACKBONE_FAMILIES[backbone.algorithm].one_pass_predictions:
        raise ModelMetadataError(
            f"its own predictions ({len(labels)} classes) are not offered as a head: "
            "auto-tagging is supported on effnet and musicnn backbones",
            "nothing to do: its heads work as usual",
        )
    output_node = str(output["name"])
    if output_node == backbone.embedding_output:
        raise ModelMetadataError(
            f"its predictions output {output_node!r} is its embeddings output"
        )
    _check_output_width(output, labels)
    head_name = autotagging_head_name(backbone.name)
    if head_name is None:
        raise ModelMetadataError(
            f"its own predictions are not offered as a head: the file name {backbone.name!r} "
            "is not '<name>-<version>' like Essentia's (e.g. msd-musicnn-1)",
            "rename its .pb and .json to Essentia's file name (the names heads refer to it by)",
        )
    with_predictions = replace(backbone, predictions_output=output_node)
    head = Head(
        name=backbone.name,
        head_name=head_name,
        embedding_tag=backbone.name,
        model_key=f"{backbone.family}-{backbone.name}",
        labels=labels,
        version=backbone.version,
        kind=_head_kind(backbone.input_node, output),
        graph_path=backbone.graph_path,
        metadata_path=backbone.metadata_path,
        input_node=backbone.input_node,
        output_node=output_node,
        backbone=with_predictions,
        tagger_version=_tagger_version(compute_versions, backbone.graph_path, backbone.metadata_path),
        autotagging=True,
    )
    return _checked_key(head)


def _labels(classes: Any) -> tuple[str, ...]:
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(label, str) and label for label in classes)
    ):
        raise ModelMetadataError("'classes' must be a non-empty list of label strings")
    if len(set(classes)) != len(classes):
        raise ModelMetadataError("'classes' has duplicate labels")
    return tuple(classes)


def _check_output_width(output: Mapping[str, Any], labels: tuple[str, ...]) -> None:
    width = last_int_dim(output)
    if width is not None and width != len(labels):
        raise ModelMetadataError(
            f"prediction output width {width} does not match {len(labels)} classes"
        )


def backbone_names(embedding: Mapping[str, Any]) -> list[str]:
    """The names a head's ``inference.embedding_model`` gives its backbone: ``model_name``, then
    the file name of its ``link``."""
    names = [embedding.get("model_name"), embedding.get("link")]
    if isinstance(names[1], str):
        names[1] = Path(urllib.parse.urlsplit(names[1]).path).stem
    return [name for name in names if isinstance(name, str) and name]


def _find_backbone(
    inference: Mapping[str, Any], backbones: Mapping[str, Backbone], head_file: str
) -> Backbone:
    embedding = inference.get("embedding_model")
    if not isinstance(embedding, Mapping):
        raise ModelMetadataError("head metadata names no 'inference.embedding_model'")
    candidates = backbone_names(embedding)
    for name in candidates:
        if name in backbones:
            return backbones[name]
    wanted = " or ".join(repr(name) for name in dict.fromkeys(candidates)) or "(unnamed)"
    raise ModelMetadataError(
        f"its backbone {wanted} was not found in the models directory "
        "(add the embedding model's .pb and .json)",
        f"`nomarr-pipeline models fetch {head_file}` (fetches its backbone)",
    )


def _head_kind(input_node: str, output: Mapping[str, Any]) -> HeadKind:
    name = str(output["name"])
    op = str(output.get("op") or name.rsplit("/", 1)[-1].split(":", 1)[0])
    if name.startswith("PartitionedCall") or input_node.startswith("serving_default"):
        return HeadKind.PARTITIONED
    if op == "Softmax":
        return HeadKind.SOFTMAX
    if op == "Sigmoid":
        return HeadKind.SIGMOID
    if op == "Identity":
        return HeadKind.REGRESSION
    raise ModelMetadataError(
        f"prediction output {name!r} (op {op!r}) is not Softmax, Sigmoid, Identity "
        "or a PartitionedCall"
    )


_RENAME_HEAD = "rename its .pb and .json to Essentia's '<head>-<embedding tag>' file name"


def _parse_head(
    metadata_path: Path,
    graph_path: Path,
    metadata: Mapping[str, Any],
    backbones: Mapping[str, Backbone],
    compute_versions: bool,
) -> Head:
    stem = graph_path.stem
    head_name, sep, embedding_tag = stem.partition("-")
    if not sep or not head_name or not embedding_tag:
        raise ModelMetadataError(
            f"head file name {stem!r} is not '<head_name>-<embedding tag>' "
            "(e.g. mood_happy-discogs-effnet-1)",
            _RENAME_HEAD,
        )
    labels = _labels(metadata.get("classes"))

    inference = _inference(metadata)
    algorithm = inference.get("algorithm", HEAD_ALGORITHM)
    if algorithm != HEAD_ALGORITHM:
        raise ModelMetadataError(
            f"head algorithm {algorithm!r} is not supported (only {HEAD_ALGORITHM})"
        )
    backbone = _find_backbone(inference, backbones, stem)
    inputs = _schema_nodes(metadata, "inputs")
    input_node = str(inputs[0]["name"]) if inputs else "model/Placeholder"
    input_width = last_int_dim(inputs[0]) if inputs else None
    if input_width is not None and input_width != backbone.embedding_size:
        raise ModelMetadataError(
            f"head input width {input_width} does not match backbone {backbone.name!r} "
            f"embedding size {backbone.embedding_size}",
            "this head was trained on another backbone's embeddings: fetch the variant of "
            f"the head made for {backbone.name}, or correct its 'inference.embedding_model'",
        )
    output = _predictions_node(metadata, or_only_output=True)
    if output is None:
        raise ModelMetadataError("'schema.outputs' has no output with output_purpose 'predictions'")
    _check_output_width(output, labels)

    model_key = f"{backbone.family}-{embedding_tag}"
    head = Head(
        name=stem,
        head_name=head_name,
        embedding_tag=embedding_tag,
        model_key=model_key,
        labels=labels,
        version=_version(metadata),
        kind=_head_kind(input_node, output),
        graph_path=graph_path,
        metadata_path=metadata_path,
        input_node=input_node,
        output_node=str(output["name"]),
        backbone=backbone,
        tagger_version=_tagger_version(compute_versions, graph_path, metadata_path, backbone.graph_path),
    )
    return _checked_key(head, _RENAME_HEAD)


def _tagger_version(compute: bool, graph: Path, metadata: Path, backbone_graph: Path | None = None) -> str:
    return tagger_version(backbone_graph or graph, graph, metadata) if compute else ""


def _checked_key(head: Head, fix: str = "") -> Head:
    if problem := partition_key_problem(head.partition_key):
        raise ModelMetadataError(problem, fix)
    return head


_digest_cache: dict[tuple[str, int, int], bytes] = {}


def _file_digest(path: Path) -> bytes:
    # Cached by (path, size, mtime): a backbone shared by many heads is read once per
    # process, and a changed file is hashed again. A model's identity is its .pb where it
    # has one, whichever engine runs it.
    if path.suffix == ".onnx" and path.with_suffix(".pb").is_file():
        path = path.with_suffix(".pb")
    stat = path.stat()
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _digest_cache:
        with path.open("rb") as stream:
            _digest_cache[cache_key] = hashlib.file_digest(stream, "sha256").digest()
    return _digest_cache[cache_key]


def tagger_version(backbone_graph: Path, head_graph: Path, head_metadata: Path) -> str:
    """16 hex chars over the three files' SHA-256 digests (the ``.pb`` of a model that has
    both files): any change to the model bytes → re-analysis."""
    combined = hashlib.sha256()
    for path in (backbone_graph, head_graph, head_metadata):
        combined.update(_file_digest(path))
    return combined.hexdigest()[:16]
