"""What a models folder holds, as text for people: ``nomarr-pipeline models list``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nomarr_pipeline.ml.discovery import Backbone, Head, ModelCatalog

LABELS_SHOWN = 8


def _labels(labels: tuple[str, ...], limit: int | None) -> str:
    shown = labels if limit is None else labels[:limit]
    more = f", … (+{len(labels) - len(shown)} more)" if len(shown) < len(labels) else ""
    return ", ".join(shown) + more


def _where(path: Path, models_dir: Path) -> str:
    inside = path != models_dir and path.is_relative_to(models_dir)
    return str(path.relative_to(models_dir) if inside else path)


def onnx_mismatches(catalog: ModelCatalog) -> dict[Path, str]:
    """Each ``.onnx`` the catalog runs whose tensor names or widths disagree with its JSON."""
    from nomarr_pipeline.ml.onnx_engine import onnx_problem

    own_heads = {head.backbone.name: head for head in catalog.heads if head.autotagging}
    models: list[tuple[Backbone | Head, str, dict[str, int | None]]] = []
    for backbone in catalog.backbones:
        widths: dict[str, int | None] = {backbone.embedding_output: backbone.embedding_size}
        if own := own_heads.get(backbone.name):
            widths[own.output_node] = len(own.labels)
        models.append((backbone, backbone.input_node, widths))
    models += [(head, head.input_node, {head.output_node: len(head.labels)})
               for head in catalog.heads if not head.autotagging]
    found = {model.graph_path: onnx_problem(model.graph_path, input_name, widths)
             for model, input_name, widths in models if model.engine == "onnx"}
    return {path: problem for path, problem in found.items() if problem}


def models_listing(
    catalog: ModelCatalog,
    models_dir: Path,
    *,
    mood_head: Callable[[str], bool] | None = None,
    labels_shown: int | None = LABELS_SHOWN,
) -> list[str]:
    """Backbones, heads (and whether they vote in mood tiers, when ``mood_head`` is given) and
    every problem with what to do, an ``.onnx`` that disagrees with its JSON included."""
    mismatches = onnx_mismatches(catalog)
    problems = len(catalog.problems) + len(mismatches)
    lines = [
        f"models folder {models_dir}: {len(catalog.backbones)} backbones, "
        f"{len(catalog.heads)} heads, {problems} problems",
        "",
        "backbones:",
    ]
    own_heads = {head.backbone.name: head for head in catalog.heads if head.autotagging}
    for backbone in catalog.backbones:
        own = own_heads.get(backbone.name)
        tags = f", auto-tagging ({len(own.labels)} tags)" if own else ""
        lines.append(f"  {backbone.name}  [{backbone.family}{tags}, {backbone.engine}]  "
                     f"{_where(backbone.graph_path, models_dir)}")
    if not catalog.backbones:
        lines.append("  (none)")
    lines += ["", "heads (partition key: labels):"]
    for head in catalog.heads:
        notes = [f"{len(head.labels)} label{'s' if len(head.labels) != 1 else ''}", head.engines]
        if head.autotagging:
            notes.append(f"the tags of {head.backbone.name}")
        if mood_head is not None:
            notes.append("in mood tiers" if mood_head(head.head_name) else "not in mood tiers")
        lines.append(f"  {head.partition_key}  ({', '.join(notes)})")
        lines.append(f"      {_labels(head.labels, labels_shown)}")
    if not catalog.heads:
        lines.append("  (none)")
    if problems:
        lines += ["", "problems:"]
        for problem in catalog.problems:
            lines.append(f"  {_where(problem.path, models_dir)}: {problem.message}")
            if problem.fix:
                lines.append(f"      next: {problem.fix}")
        for path, message in sorted(mismatches.items()):
            lines.append(f"  {_where(path, models_dir)}: {message}; it fails on ONNX Runtime")
            lines.append(f"      next: replace the .onnx with Essentia's, or delete it to run "
                         f"{path.stem}.pb on TensorFlow")
    return lines
