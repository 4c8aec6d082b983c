"""The dataset card (`README.md`) of a published build: a YAML header the hub and `datasets` read
(`license`, `task_categories`, `language`, `configs` with their `data_files`, `dataset_info` with
features and split sizes) and prose on how the data was built: recipe, model ids, counts, the
filter policy (applied: what each rule removed; else what it would remove), score distributions (a figure and a table), a
grid of sample triplets, and the licence and attribution of every source.

Everything is read from the run folder (`run.json`, `recipe.json`, the manifests, the triplet
table) and the staged layout; nothing in it depends on the time or the machine, so the same run
gives the same card, byte for byte."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import yaml

from nexus_gen.hub.card_figures import score_plot_png, score_summary, triplet_scores
from nexus_gen.hub.hub_layout import ASSETS_DIR, TRIPLETS_CONFIG, StagedConfig
from nexus_gen.hub.publish_source import UNTYPED
from nexus_gen.hub.source_licences import UNKNOWN, card_licence, is_builtin_model, source_licences

log = logging.getLogger(__name__)

SCORES_PNG = f"{ASSETS_DIR}/score_distributions.png"
GRID_PNG = f"{ASSETS_DIR}/sample_triplets.png"
# hub task ids of each config
TASK_CATEGORIES = {"understanding": ["visual-question-answering", "image-text-to-text"],
                   "generation": ["text-to-image"], "editing": ["image-to-image"],
                   TRIPLETS_CONFIG: ["image-to-image"]}
CONFIG_PROSE = {
    "understanding": "image + question -> answer conversations (unified samples, task `understanding`)",
    "generation": "caption -> image conversations (unified samples, task `generation`)",
    "editing": "source image + instruction -> edited image conversations, both directions and every "
               "language of each triplet (unified samples, task `editing`)",
    TRIPLETS_CONFIG: "one row per edit triplet: source, target and mask images, instructions both ways, "
                     "captions, every score, detector verdicts, lineage",
}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


@dataclass
class Card:
    text: str  # README.md
    assets: dict[str, bytes]  # repo path -> bytes (figures)
    license: Any
    models: dict[str, list[str]]


def size_category(rows: int) -> str:
    """The hub's `size_categories` bucket of a row count."""
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "n>1B"


def lineage_models(triplets_dir: Path) -> dict[str, set[str]]:
    """role -> model ids recorded in the lineage of the triplet table (resolved ids, not specs)."""
    out: dict[str, set[str]] = {}
    man = triplets_dir / "manifest.json"
    if not man.exists():
        return out
    for s in json.loads(man.read_text(encoding="utf-8"))["shards"]:
        for text in pq.read_table(triplets_dir / s["file"], columns=["lineage"]).column("lineage").to_pylist():
            try:
                models = (json.loads(text or "{}") or {}).get("models") or {}
            except json.JSONDecodeError:
                continue
            for role, mid in models.items():
                if mid:
                    out.setdefault(role, set()).add(str(mid))
    return out


def _yaml_header(configs: dict[str, StagedConfig], repo_id: str, licence: Any, languages: list[str],
                 total_rows: int, recipe_name: str) -> str:
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    cats: list[str] = []
    for name in configs:
        cats += [c for c in TASK_CATEGORIES.get(name, []) if c not in cats]
    head: dict[str, Any] = {"license": licence}
    if licence == "other":
        head["license_name"] = "unknown"
    head.update({"language": languages, "task_categories": cats, "size_categories": [size_category(total_rows)],
                 "tags": ["nexus-gen", "image-editing", "synthetic", f"recipe-{recipe_name}"],
                 "pretty_name": repo_id.split("/", 1)[1]})
    card = DatasetCardData()
    infos = {}
    for name, c in configs.items():
        splits = SplitDict()
        for split, rows in c.rows.items():
            splits.add(SplitInfo(name=split, num_bytes=c.data_bytes[split], num_examples=rows))
        infos[name] = DatasetInfo(config_name=name, features=datasets.Features.from_dict(c.features), splits=splits,
                                  download_size=sum(c.bytes.values()),
                                  dataset_size=sum(s.num_bytes for s in splits.values()))
    DatasetInfosDict(infos).to_dataset_card_data(card)
    default = "editing" if "editing" in configs else next(iter(configs))
    MetadataConfigs({name: {"data_files": [{"split": s, "path": f"{name}/{s}-*"} for s in c.rows],
                            **({"default": True} if name == default else {})}
                     for name, c in configs.items()}).to_dataset_card_data(card)
    head.update(card.to_dict())
    return yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=100)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    esc = [[str(x).replace("|", "\\|").replace("\n", " ") for x in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in esc]


def _policy_section(run_dir: Path) -> list[str]:
    """What the recipe's filter policy would remove, per edit type and rule (nothing is removed
    from the published data)."""
    from nexus_gen.edit.select import SelectError, _recipe_policy, decide, triplet_rows
    from nexus_gen.scoring.policy import PolicyError, policy_for_edit_type

    stored = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    name = (stored.get("recipe") or {}).get("filter_policy") or "auto"
    lines = ["## Filter policy", "",
             f"The recipe's filter policy is `{name}`" + (" (each edit type's built-in policy, "
             "`datasets_spec/filters/<type>.yaml`)" if name == "auto" else "") + ". Scores are stored, "
             "selection comes later: **this publication is unfiltered** (every built triplet, its scores "
             "as columns of the `triplets` config and in each sample's `meta`: filter on them, or publish a "
             "filtered copy with `nexus-gen publish RUN --policy NAME`). Applied to the stored scores, "
             "the policy would keep and remove:", ""]
    try:
        chosen = _recipe_policy(stored)
        table, _, _ = triplet_rows(run_dir)
        if not len(table):
            return lines + ["No editing triplets: nothing to filter.", ""]
        policies = {et: chosen or policy_for_edit_type(et) for et in sorted(set(table["edit_type"]))}
        quiet = logging.getLogger("nexus_gen.scoring.policy")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its per-rule warnings are the table's "skipped" rows
        try:
            _, report = decide(table, policies)
        finally:
            quiet.setLevel(level)
    except (SelectError, PolicyError, OSError) as exc:
        return lines + [f"(not computed: {exc})", ""]
    rows = []
    for et, r in report.items():
        for rule in r["rules"]:
            what = "skipped (no such score stored)" if rule["skipped"] else str(rule["removed"])
            rows.append([et, r["policy"], rule["name"], rule["column"], what])
        rows.append([et, r["policy"], "**kept**", "", f"{r['rows_out']} of {r['rows_in']}"])
    return lines + _table(["edit type", "policy", "rule", "score", "removed"], rows) + [
        "", "Reproduce the selection locally with `nexus-gen select RUN --out DIR` (see the nexus-gen README).", ""]


def _applied_policy_section(selection: dict[str, Any]) -> list[str]:
    """The policy a filtered publication applied (`nexus-gen select`'s selection.json): triplets
    in -> out per edit type and what each rule removed."""
    s = selection.get("samples") or {}
    passed = ", ".join(f"{k} {v}" for k, v in sorted((selection.get("passthrough") or {}).items())) or "none"
    lines = ["## Filter policy", "",
             f"**This publication is filtered**: the policy `{selection.get('policy')}` was applied to the "
             f"stored scores (`nexus-gen select`; nothing recomputed): {selection.get('triplets_in')} triplets in, "
             f"{selection.get('triplets_out')} kept; editing samples {s.get('editing_in')} -> {s.get('editing_out')} "
             "(both directions and every language of a kept triplet). The `triplets` config holds the kept "
             f"triplets only. Generation and understanding samples pass through unfiltered ({passed}).", ""]
    lines += _table(["edit type", "policy", "triplets in", "triplets out"],
                    [[et, r["policy"], r["rows_in"], r["rows_out"]] for et, r in selection["edit_types"].items()])
    if UNTYPED in selection["edit_types"]:
        lines += ["", f"(`{UNTYPED}`: mixed-in editing samples whose meta names no edit type; they have no "
                  "row in the `triplets` config.)"]
    lines += ["", "What each rule removed (rules run in order: a triplet counts for the first rule it fails):", ""]
    rows = []
    for et, r in selection["edit_types"].items():
        for rule in r["rules"]:
            what = "skipped (no such score stored)" if rule["skipped"] else str(rule["removed"])
            rows.append([et, r["policy"], rule["name"], rule["column"], what])
    return lines + _table(["edit type", "policy", "rule", "score", "removed"], rows) + [""]


def build_card(run_dir: Path, configs: dict[str, StagedConfig], repo_id: str,
               chosen_license: Optional[str] = None, selection: Optional[dict[str, Any]] = None,
               triplets_dir: Optional[Path] = None) -> Card:
    """The card and its figures for the staged layout of `run_dir` (see module doc); a filtered
    publication passes its `selection` (selection.json) and the folder (a manifest) of the kept
    triplet rows, which the figures and model ids are read from."""
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    stored = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    recipe = stored.get("recipe") or {}
    trip_dir = triplets_dir or run_dir / "triplets"
    models = lineage_models(trip_dir)
    for i, s in enumerate(recipe.get("sources") or []):
        if s.get("kind") == "text2image" and s.get("model"):
            models.setdefault("generator", set()).add(str(s["model"]))
    sources = source_licences(stored)
    licence, why = card_licence(sources, models, chosen_license)
    languages = sorted({lang for c in configs.values() for lang in c.languages} | set(recipe.get("languages") or []))
    total = sum(c.total_rows for c in configs.values())
    header = _yaml_header(configs, repo_id, licence, languages, total, record["recipe"])
    c = record["counts"]
    md = [f"# {repo_id}", "",
          f"Image understanding, generation and editing data in the unified conversation format of "
          f"[Nexus-Gen](https://arxiv.org/abs/2504.21356), built by nexus-gen from the recipe "
          f"`{record['recipe']}` (hash `{record['recipe_hash']}`). {recipe.get('description') or ''}".rstrip(), "",
          "## Configs", ""]
    rows = [[f"`{n}`", CONFIG_PROSE.get(n, ""), ", ".join(f"{s} {r}" for s, r in cfg.rows.items()),
             sum(len(v) for v in cfg.files.values())] for n, cfg in configs.items()]
    md += _table(["config", "what", "rows", "files"], rows)
    first = "editing" if "editing" in configs else next(iter(configs))
    md += ["", "```python", "import datasets", f'ds = datasets.load_dataset("{repo_id}", "{first}")',
           f'ds["{next(iter(configs[first].rows))}"][0]["images"][0]  # a PIL image' if first != TRIPLETS_CONFIG
           else f'ds["{next(iter(configs[first].rows))}"][0]["source_image"]  # a PIL image', "```", "",
           "Unified samples: `id, source, task, language, messages [{role, content}], images [Image], meta` "
           "(JSON text: lineage, scores, captions); each `<image>` tag in the messages, in order, takes "
           "the next entry of `images`.", "",
           "## How it was built", "",
           f"Build status **{record['status']}**: {record['shards']['done']} of {record['shards']['planned']} "
           f"shards; {c['planned']} planned triplets = {c['triplets']} built + {c['rejected']} rejected; "
           f"{c['samples']} unified samples "
           f"({', '.join(f'{k} {v}' for k, v in sorted(record['by_task'].items()))}), by split "
           f"{', '.join(f'{k} {v}' for k, v in sorted(record['by_split'].items()))}. Every triplet gives "
           "editing samples in both directions (instruction and reverse instruction) and in every "
           f"language of the recipe ({', '.join(recipe.get('languages') or [])}); a source and all its "
           f"triplets land in one split. Seed {recipe.get('seed')}, splits {json.dumps(recipe.get('splits'))}.", ""]
    md += _table(["edit type", "planned", "built", "rejected"],
                 [[t, v.get("planned", 0), v.get("triplets", 0), v.get("rejected", 0)]
                  for t, v in sorted(record.get("by_edit_type", {}).items())])
    if record.get("rejects_by_reason"):
        md += ["", "Rejected triplets by reason:", ""]
        md += _table(["reason", "count"], sorted(record["rejects_by_reason"].items(), key=lambda x: (-x[1], x[0])))
    md += ["", "### Sources", ""]
    md += _table(["source", "kind", "what"], [[s.get("name", f"source{i}"), s.get("kind"), _source_what(s)]
                                              for i, s in enumerate(recipe.get("sources") or [])])
    if record.get("datasets"):
        md += ["", "Mixed-in datasets (converted samples): " + "; ".join(
            f"{k}: {v.get('accepted', 0)} of {v.get('input', 0)} accepted" for k, v in sorted(record["datasets"].items()))]
    md += ["", "### Models", "", "Each role as the recipe names it and the ids the build recorded in every "
           "triplet's lineage (`tiny` models are small random-init models built locally from configs: their "
           "images are noise and only test the pipeline).", ""]
    specs = recipe.get("models") or {}
    roles = sorted({r for r, v in specs.items() if v} | set(models))
    md += _table(["role", "recipe", "ids used"], [[r, f"`{specs.get(r)}`" if specs.get(r) else "",
                                                    ", ".join(f"`{m}`" for m in sorted(models.get(r, ())))]
                                                   for r in roles])
    if record.get("versions"):
        md += ["", "Package versions: " + ", ".join(f"{k} {v}" for k, v in sorted(record["versions"].items())) + "."]
    md += [""] + (_applied_policy_section(selection) if selection else _policy_section(run_dir))
    assets: dict[str, bytes] = {}
    if (trip_dir / "manifest.json").exists():
        scores = triplet_scores(trip_dir)
        assets[SCORES_PNG] = score_plot_png(scores)
        from nexus_gen.edit.grid import triplet_grid

        assets[GRID_PNG] = triplet_grid(trip_dir)
        md += ["## Score distributions", "",
               "CLIP-T (edited image vs target caption), CLIP-I and DINO (source vs edited image), directional "
               "CLIP, L1 on [0, 1] pixels (whole image, inside and outside the edit mask) and the verifier's "
               "detector score, per edit type, as stored by the build:", "",
               f"![score distributions]({SCORES_PNG})", ""]
        md += _table(["edit type", "score", "n", "mean", "p10", "median", "p90"], score_summary(scores))
        md += ["", "## Sample triplets", "", "Source | edited | edit mask, with the instruction:", "",
               f"![sample triplets]({GRID_PNG})", ""]
    md += ["## Licences and attribution", "", f"Card licence: {why}", ""]
    md += _table(["source", "kind", "licence", "attribution"],
                 [[s.name, s.kind, s.licence or "none (no third-party content)", s.attribution] for s in sources])
    real = {r: sorted(i for i in ids if not is_builtin_model(i)) for r, ids in models.items()}
    real = {r: ids for r, ids in real.items() if ids}
    if real:
        md += ["", "Models that made or judged the data (their licences and terms are on their model cards): "
               + "; ".join(f"{r}: " + ", ".join(f"`{i}`" for i in ids) for r, ids in sorted(real.items())) + "."]
    if any(s.licence == UNKNOWN for s in sources):
        md += ["", "A source marked `unknown` has terms nexus-gen could not read: check them before using or "
               "redistributing this data."]
    md += ["", "The sample format is Nexus-Gen's (Zhang et al. 2025, arXiv:2504.21356); the data was built "
           f"and published with nexus-gen {record.get('versions', {}).get('nexus-gen', '')}.".replace(" .", "."), ""]
    return Card(f"---\n{header}---\n\n" + "\n".join(md), assets, licence,
                {r: sorted(v) for r, v in models.items()})


def _source_what(s: dict[str, Any]) -> str:
    kind = s.get("kind")
    if kind == "scenes":
        return f"{s.get('count')} procedural scenes, {s.get('size')} px, {s.get('min_objects')}-{s.get('max_objects')} objects"
    if kind == "images":
        return f"photos from {', '.join(map(str, s.get('paths') or []))}, {s.get('size')} px"
    if kind == "dataset":
        return f"{s.get('format')} data from {', '.join(map(str, s.get('inputs') or []))}"
    if kind == "hf_dataset":
        return f"`{s.get('path')}` split {s.get('split')}, first {s.get('count')} rows"
    if kind == "text2image":
        n = len(s.get("prompts") or []) or s.get("prompts_file")
        return f"{n} prompts -> `{s.get('model')}`, {s.get('images_per_prompt')} image(s) each"
    return json.dumps(s, sort_keys=True)
