"""``fruits model``: the home's active model (id, since when, rows, the CPU it was chosen on) and its other models.
No Spark: read from the registry (:mod:`fruits.home.models`) and the tables' Delta logs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fruits.home.home import Home


def models_report(home: Home) -> dict[str, Any]:
    """Every model of ``home``, oldest first, with its row count (from the Delta log: no data file is read)."""
    models = []
    for record in home.models.load().models:
        entry = asdict(record)
        actions = None if record.state == "pruned" else home.model_features(record).add_actions()
        entry["rows"] = sum(v or 0 for v in actions.column("num_records").to_pylist()) if actions is not None else 0
        models.append(entry)
    active = next((m for m in models if m["state"] == "active"), None)
    return {"home": home.root, "active": active, "models": models}


def format_models(report: dict[str, Any]) -> str:
    """The report as people read it."""
    active = report["active"]
    if active is None:
        return f"{report['home']}: no model yet (the first `fruits stream` records it)"
    lines = [
        f"active model {active['number']}: {active['model_id']}",
        f"  since {active['active_since'] or active['since']}; {active['rows']} rows in {active['table']}",
        f"  chosen on: {active['cpu'] or 'unknown CPU'}",
    ]
    if chosen := active["chosen"]:  # the gate's sentence (precision = "auto"); --json has its figures
        lines.append(f"  {chosen.get('why') or 'precision chosen: ' + str(chosen.get('precision'))}")
    for model in report["models"]:
        if model is not active:
            lines.append(f"model {model['number']} ({model['state']}): {model['model_id']}, {model['rows']} rows"
                         + (f", {model['left_out']} photos left out" if model["left_out"] else ""))
    return "\n".join(lines)
