"""Publishing a finished build run to a dataset hub as a Prefect flow (`nexus-gen publish`).
Thin: every step is `nexus_gen.hub.hub_publish.publish_run`; the flow adds a markdown artifact
with the summary. The token is read by the library from the environment or the client's login:
it is never a flow parameter, so Prefect never stores or shows it."""
from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from nexus_gen.hub.hub_publish import PublishOptions, publish_run, summary

log = logging.getLogger(__name__)


def summary_markdown(rec: dict[str, Any]) -> str:
    """The artifact: target, status, configs and rows, files uploaded / unchanged / deleted."""
    s = summary(rec)
    what = f"policy `{rec['policy']}`" if rec.get("policy") else \
        f"selection {rec['selection']}" if rec.get("selection") else "unfiltered"
    md = [f"# publish `{rec['recipe']}` -> {rec['target']} ({rec['status']})", "",
          f"location: {rec['location']}; {what}; staging {rec.get('staging')}", "", "| config | split | rows |", "|---|---|---|"]
    for config, splits in (rec.get("configs") or {}).items():
        md += [f"| {config} | {split} | {rows} |" for split, rows in splits.items()]
    md += ["", f"uploaded {s['uploaded']} file(s) in {s['commits']} commit(s), unchanged {s['unchanged']}, "
           f"deleted {s['deleted']}"]
    if rec.get("status") == "dry-run":
        md += ["", "dry run: would upload " + (", ".join(f"`{p}`" for p in rec.get("to_upload") or []) or "nothing")]
    return "\n".join(md)


@flow(name="publish", log_prints=False)
def publish_flow(run_dir: str, repo_id: str, policy: Optional[str] = None, hub: str = "hf", private: bool = False, dry_run: bool = False,
                 endpoint: Optional[str] = None, license: Optional[str] = None,
                 max_shard_bytes: int = PublishOptions.max_shard_bytes, commit_files: int = PublishOptions.commit_files,
                 commit_bytes: int = PublishOptions.commit_bytes, retries: int = PublishOptions.retries) -> dict[str, Any]:
    """Stage, validate and upload `run_dir` (see nexus_gen.hub.hub_publish); returns the record."""
    opts = PublishOptions(repo_id=repo_id, policy=policy, hub=hub, private=private, dry_run=dry_run, endpoint=endpoint,
                          license=license, max_shard_bytes=max_shard_bytes, commit_files=commit_files,
                          commit_bytes=commit_bytes, retries=retries)
    rec = publish_run(run_dir, opts)
    create_markdown_artifact(summary_markdown(rec), key="publish-summary", description=f"publish {rec['target']}")
    return rec
