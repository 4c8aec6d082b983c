"""Benchmark reports: a report is titled sections of text, tables and figures, rendered to
`report.md` (figures as PNG files beside it) and a self-contained `report.html` (figures as base64
PNG data URIs, no external asset). Every benchmark builds its content and uses these renderers.

`write_run_report(run_dir)` picks the benchmark's builder from the run's `config.json`; given a
directory of run directories (e.g. `runs/demo`), it writes their side-by-side report instead."""
from __future__ import annotations

import base64
import html
import importlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

FIGURE_DIR = "report_files"

# benchmark name (config.json "benchmark") -> "module:function" building its Report from a run dir.
REPORT_BUILDERS: dict[str, str] = {
    "geneval": "eval.report_geneval:build_geneval_report",
    "geneval-scenes": "eval.report_geneval:build_geneval_report",
    "understanding": "eval.understanding.understanding_report:build_understanding_report",
    "editing": "eval.editing.edit_report:build_editing_report",
}
# benchmark -> "module:function" building one Report over several run directories of that
# benchmark: f(run_dirs, links_from=DIR), DIR being where the report goes (links to runs' reports).
COMPARISON_BUILDERS: dict[str, str] = {
    "geneval": "eval.report_geneval:build_comparison_report",
    "geneval-scenes": "eval.report_geneval:build_comparison_report",
}


@dataclass
class Table:
    """A table: column names and rows of cells (numbers are formatted, None shows as a dash)."""

    columns: list[str]
    rows: list[list[Any]]
    title: str = ""
    note: str = ""

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column (e.g. for a Prefect table artifact)."""
        return [dict(zip(self.columns, r)) for r in self.rows]


@dataclass
class Figure:
    """A rendered figure: PNG bytes, a file-name stem and a caption."""

    name: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    """Text paragraphs (markdown: bullets, `code`, **bold**, [links](...)), then tables and
    figures, then optionally a preformatted block (e.g. the run's config as JSON)."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    code: Optional[str] = None


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure, without the timestamp-free but version-bearing
    'Software' tag, so the same plot gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def bar_chart(labels: Sequence[str], series: dict[str, Sequence[float]], title: str,
              ylabel: str = "accuracy", ylim: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """A (grouped) bar chart, one group per label and one bar per series, as PNG bytes."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(min(10.0, max(5.0, 0.9 * len(labels) + 2.0)), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(series))
    width = 0.8 / n
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(labels))]
        bars = ax.bar(xs, list(values), width=width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(list(labels), rotation=20, ha="right", fontsize=8)
    lo, hi = ylim
    ax.set_ylim(lo, hi + 0.1 * (hi - lo))  # room for the value labels above full bars
    ax.set_yticks([lo + (hi - lo) * i / 5 for i in range(6)])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(3, n),
                  frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v == v else "nan"
    return str(v)


def _md_cell(v: Any) -> str:
    return _cell(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, embed_figures: bool = False) -> str:
    """Markdown text; figures link to `report_files/<name>.png`, or are inline data URIs."""
    out = [f"# {report.title}", ""]
    for s in report.sections:
        out += [f"## {s.title}", ""]
        for para in s.text:
            out += [para, ""]
        for t in s.tables:
            if t.title:
                out += [f"**{t.title}**", ""]
            out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
            out.append("|" + "|".join("---" for _ in t.columns) + "|")
            for r in t.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            out.append("")
            if t.note:
                out += [t.note, ""]
        for f in s.figures:
            src = _data_uri(f.png) if embed_figures else f"{FIGURE_DIR}/{f.name}.png"
            out += [f"![{f.caption or f.name}]({src})", ""]
            if f.caption:
                out += [f"*{f.caption}*", ""]
        if s.code is not None:
            out += ["```", s.code.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _para_html(para: str) -> str:
    """A paragraph's markdown as HTML (Python-Markdown, with raw HTML escaped, not passed through:
    text may hold model ids and paths)."""
    import markdown

    md = markdown.Markdown()
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(para)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #bbb;
padding:.25rem .6rem;text-align:left}th{background:#eee}td.num{text-align:right}
pre{background:#f5f5f5;padding:.6rem;overflow-x:auto;font-size:.8rem}figure{margin:1rem 0}
figcaption{font-size:.85rem;color:#555}code{background:#f1f1f1;padding:0 .2rem}"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 PNG data URIs."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(report.title)}</h1>"]
    for s in report.sections:
        out.append(f"<section><h2>{e(s.title)}</h2>")
        out += [_para_html(p) for p in s.text]
        for t in s.tables:
            out.append("<table>")
            if t.title:
                out.append(f"<caption>{e(t.title)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in t.columns)
                       + "</tr></thead><tbody>")
            for r in t.rows:
                cells = "".join(
                    f'<td class="num">{e(_cell(c))}</td>' if isinstance(c, (int, float))
                    and not isinstance(c, bool) else f"<td>{e(_cell(c))}</td>" for c in r)
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
            if t.note:
                out.append(_para_html(t.note))
        for f in s.figures:
            out.append(f'<figure><img alt="{e(f.caption or f.name)}" src="{_data_uri(f.png)}">'
                       + (f"<figcaption>{e(f.caption)}</figcaption>" if f.caption else "")
                       + "</figure>")
        if s.code is not None:
            out.append(f"<pre>{e(s.code)}</pre>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write `report.md` (+ `report_files/*.png`) and the self-contained `report.html` in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [f for s in report.sections for f in s.figures]
    names = [f.name for f in figures]
    if len(set(names)) != len(names):
        raise ValueError(f"report {report.title!r}: figure names must be unique, got {names}")
    if figures:
        (out_dir / FIGURE_DIR).mkdir(exist_ok=True)
        for f in figures:
            (out_dir / FIGURE_DIR / f"{f.name}.png").write_bytes(f.png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(report), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return md, page


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's `config.json`, with a clear error if the directory is not a run directory."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json "
                                f"(run a benchmark with --out {run_dir} first)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e


def _load(spec: str) -> Callable[..., Report]:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def child_runs(parent: Path) -> list[Path]:
    """Run directories (those with a config.json) directly inside `parent`, sorted by name."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if (p / "config.json").is_file())


def build_run_report(run_dir: Path) -> Report:
    """The Report of a run directory, by its benchmark's registered builder; for a directory of
    run directories, their side-by-side comparison (one per benchmark: scores of different
    benchmarks are not comparable, so they never share a table)."""
    run_dir = Path(run_dir)
    children = child_runs(run_dir) if not (run_dir / "config.json").is_file() else []
    if children:
        return build_runs_report(run_dir, children)
    config = read_run_config(run_dir)
    bench = config.get("benchmark")
    if bench not in REPORT_BUILDERS:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: benchmark {bench!r} has no report "
                         f"builder; known: {sorted(REPORT_BUILDERS)}")
    return _load(REPORT_BUILDERS[bench])(run_dir)


def build_runs_report(parent: Path, children: Sequence[Path]) -> Report:
    """The report of several run directories (written into `parent`, which links to each run's
    own report): their benchmark's side-by-side comparison, or, for runs of several benchmarks,
    one comparison per benchmark under a note that they are not comparable."""
    groups: dict[str, list[Path]] = {}
    for c in children:
        groups.setdefault(str(read_run_config(c).get("benchmark")), []).append(Path(c))
    unknown = sorted(b for b in groups if b not in COMPARISON_BUILDERS)
    if unknown:
        raise ValueError(f"{parent}: its runs {', '.join(c.name for b in unknown for c in groups[b])} "
                         f"are of benchmark(s) {unknown} that no one report compares; known: "
                         f"{sorted(COMPARISON_BUILDERS)}")
    reports = {b: _load(COMPARISON_BUILDERS[b])(runs, links_from=parent) for b, runs in groups.items()}
    if len(reports) == 1:
        return next(iter(reports.values()))
    names = ", ".join(f"`{b}` ({', '.join(c.name for c in groups[b])})" for b in reports)
    merged = Report(f"{Path(parent).name}: runs of {len(reports)} benchmarks", [Section(
        "Not comparable across benchmarks", text=[
            f"These runs are of different benchmarks: {names}. Their prompt sets, detectors and "
            f"scales differ, so their scores are not comparable: each benchmark has its own "
            f"tables below."])])
    for bench, rep in reports.items():
        for s in rep.sections:
            merged.sections.append(Section(
                f"{bench}: {s.title}", text=list(s.text), tables=list(s.tables), code=s.code,
                figures=[Figure(f"{bench}_{f.name}", f.png, f.caption) for f in s.figures]))
    return merged


def write_run_report(run_dir: Path) -> tuple[Report, Path, Path]:
    """Build and write a run directory's (or a directory of runs') report into it; return the
    report and both paths."""
    report = build_run_report(run_dir)
    md, page = write_report(report, run_dir)
    return report, md, page
