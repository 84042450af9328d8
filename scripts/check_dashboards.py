#!/usr/bin/env python3
"""Static checks of the Grafana dashboards under docker/grafana/dashboards/ (run by scripts/check-ops).

For every *.json dashboard:
  - it parses, and has a uid (unique across files), a title and a panel list;
  - every panel (rows and the panels nested in collapsed rows included) has a unique integer id,
    a title and a gridPos inside the 24-column grid; top-level panels do not overlap;
  - every panel other than a row has at least one target with a PromQL `expr`, and unique refIds;
  - every `expr` (panels, template variables, annotations) names only metrics that start with
    `millstream_`, or `up`;
  - every datasource it references (panel, target, variable, annotation) is given by uid, and
    that uid is defined in the datasource provisioning files.
It also checks that the dashboard provisioning defines a file provider.

Usage: check_dashboards.py [--provisioning DIR] [DASHBOARD.json | DIR ...]
Defaults: docker/grafana/dashboards/ and docker/grafana/provisioning/, relative to the
repository. Every problem is printed as `FILE: panel ID "TITLE": what is wrong`; the exit
status is 1 when there is any.

Standard library only; PyYAML is used for the provisioning files when it is installed, with a
small fallback reader otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID_COLUMNS = 24

# PromQL words that look like identifiers but are not metric names.
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> list[str]:
    """The metric names a PromQL expression selects (Grafana $variables and macros allowed)."""
    s = STRINGS.sub('""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables and macros
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range and subquery selectors
    s = GROUPING.sub(" ", s)  # label lists of by/without/on/ignoring/group_*
    names = []
    for m in IDENT.finditer(s):
        name = m.group(1)
        if name.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", s[m.end():]):  # a function or aggregation call
            continue
        names.append(name)
    return names


def allowed_metric(name: str) -> bool:
    return name.startswith("millstream_") or name == "up"


# ---------------------------------------------------------------------------------------------
# Provisioning


def load_yaml(path: Path):
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # type: ignore
    except ImportError:
        return None, text
    return yaml.safe_load(text), text


def datasource_uids(provisioning: Path, problems: list[str]) -> set[str]:
    files = sorted(
        p for p in (provisioning / "datasources").glob("*") if p.suffix in (".yaml", ".yml")
    )
    if not files:
        problems.append(f"{provisioning / 'datasources'}: no datasource provisioning file (*.yaml)")
    uids: set[str] = set()
    for path in files:
        try:
            data, text = load_yaml(path)
        except Exception as e:  # yaml.YAMLError and decoding errors
            problems.append(f"{path}: does not parse: {e}")
            continue
        if data is None and text is not None:  # no PyYAML: read `uid:` keys of list items
            found = re.findall(r"^\s*(?:-\s+)?uid:\s*['\"]?([^'\"#\s]+)", text, re.M)
            uids.update(found)
            continue
        for i, ds in enumerate((data or {}).get("datasources") or []):
            uid = ds.get("uid") if isinstance(ds, dict) else None
            if not uid:
                problems.append(f"{path}: datasources[{i}] has no uid (dashboards reference datasources by uid)")
            else:
                uids.add(str(uid))
    if files and not uids:
        problems.append(f"{provisioning / 'datasources'}: no datasource uid is defined")
    return uids


def check_dashboard_provider(provisioning: Path, problems: list[str]) -> None:
    files = sorted(
        p for p in (provisioning / "dashboards").glob("*") if p.suffix in (".yaml", ".yml")
    )
    if not files:
        problems.append(f"{provisioning / 'dashboards'}: no dashboard provisioning file (*.yaml)")
        return
    for path in files:
        try:
            data, text = load_yaml(path)
        except Exception as e:
            problems.append(f"{path}: does not parse: {e}")
            continue
        if data is None:
            if not re.search(r"^\s*type:\s*file\b", text, re.M):
                problems.append(f"{path}: no provider of type file")
            continue
        providers = (data or {}).get("providers") or []
        if not any(isinstance(p, dict) and p.get("type", "file") == "file"
                   and (p.get("options") or {}).get("path") for p in providers):
            problems.append(f"{path}: no provider of type file with options.path")


# ---------------------------------------------------------------------------------------------
# Dashboards


class DashboardChecker:
    def __init__(self, path: Path, uids: set[str], problems: list[str]):
        self.path = shown(path)
        self.uids = uids
        self.problems = problems
        self.datasource_variables: set[str] = set()

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}")

    def check_datasource(self, where: str, ds) -> None:
        if ds is None:
            return
        if isinstance(ds, str):
            self.problem(where, f"datasource {ds!r} is given by name; reference it by uid "
                                f"({{\"type\": ..., \"uid\": ...}})")
            return
        if not isinstance(ds, dict):
            self.problem(where, f"datasource {ds!r} is not an object with a uid")
            return
        uid = ds.get("uid")
        if not isinstance(uid, str) or not uid:
            self.problem(where, "datasource has no uid")
            return
        var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
        if var:
            if var.group(1) not in self.datasource_variables:
                self.problem(where, f"datasource uid {uid} names no datasource variable")
            return
        if uid not in self.uids:
            known = ", ".join(sorted(self.uids)) or "none"
            self.problem(where, f"datasource uid {uid!r} is not provisioned (provisioned: {known})")

    def check_expr(self, where: str, expr: str) -> None:
        bare = STRINGS.sub('""', expr)
        if any(bare.count(o) != bare.count(c) for o, c in ("()", "{}", "[]")):
            self.problem(where, f"unbalanced brackets in expr: {expr}")
        for name in metric_names(expr):
            if not allowed_metric(name):
                self.problem(where, f"expr uses metric {name!r} (only millstream_* and up are "
                                    f"allowed): {expr}")

    def run(self) -> int:
        try:
            dashboard = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            self.problem("", f"is not valid JSON: {e}")
            return 0
        except OSError as e:
            self.problem("", f"cannot be read: {e}")
            return 0
        if not isinstance(dashboard, dict):
            self.problem("", "is not a JSON object")
            return 0
        for key in ("uid", "title"):
            if not isinstance(dashboard.get(key), str) or not dashboard[key].strip():
                self.problem("", f"dashboard has no {key}")
        if not isinstance(dashboard.get("schemaVersion"), int):
            self.problem("", "dashboard has no integer schemaVersion")

        for i, var in enumerate((dashboard.get("templating") or {}).get("list") or []):
            if isinstance(var, dict) and var.get("type") == "datasource":
                self.datasource_variables.add(str(var.get("name")))
        self.check_templating(dashboard)
        self.check_annotations(dashboard)

        panels = dashboard.get("panels")
        if not isinstance(panels, list) or not panels:
            self.problem("", "dashboard has no panels")
            return 0
        flat: list[tuple[dict, bool]] = []  # (panel, nested in a collapsed row)
        for p in panels:
            flat.append((p, False))
            if isinstance(p, dict) and p.get("type") == "row":
                flat.extend((q, True) for q in p.get("panels") or [])

        ids: dict[int, str] = {}
        placed: list[tuple[str, tuple[int, int, int, int]]] = []
        for index, (panel, nested) in enumerate(flat):
            if not isinstance(panel, dict):
                self.problem(f"panel #{index}", "is not a JSON object")
                continue
            pid = panel.get("id")
            title = panel.get("title")
            where = f'panel {pid} "{title}"' if title else f"panel {pid} (#{index})"
            if not isinstance(pid, int) or isinstance(pid, bool):
                self.problem(where, "has no integer id")
            elif pid in ids:
                self.problem(where, f"id {pid} is also used by {ids[pid]}")
            else:
                ids[pid] = where
            if not isinstance(title, str) or not title.strip():
                self.problem(where, "has no title")
            grid = self.check_grid(where, panel.get("gridPos"))
            if grid and not nested:
                for other, g in placed:
                    if overlap(grid, g):
                        self.problem(where, f"gridPos overlaps {other}")
                placed.append((where, grid))
            self.check_datasource(where, panel.get("datasource"))
            if panel.get("type") == "row":
                continue
            self.check_targets(where, panel)
        return len(flat)

    def check_grid(self, where: str, grid):
        if not isinstance(grid, dict):
            self.problem(where, "has no gridPos")
            return None
        values = []
        for key in ("x", "y", "w", "h"):
            v = grid.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                self.problem(where, f"gridPos.{key} is {v!r}, not a non-negative integer")
                return None
            values.append(v)
        x, y, w, h = values
        if w == 0 or h == 0:
            self.problem(where, f"gridPos has zero size (w={w}, h={h})")
            return None
        if x + w > GRID_COLUMNS:
            self.problem(where, f"gridPos x+w = {x + w} is wider than the {GRID_COLUMNS}-column grid")
        return (x, y, w, h)

    def check_targets(self, where: str, panel: dict) -> None:
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            self.problem(where, "has no targets")
            return
        refs: set[str] = set()
        with_expr = 0
        for j, t in enumerate(targets):
            twhere = f"{where} target {j}"
            if not isinstance(t, dict):
                self.problem(twhere, "is not a JSON object")
                continue
            ref = t.get("refId")
            if ref in refs:
                self.problem(twhere, f"refId {ref!r} is used twice in the panel")
            refs.add(ref)
            self.check_datasource(twhere, t.get("datasource"))
            if panel.get("datasource") is None and t.get("datasource") is None:
                self.problem(twhere, "has no datasource (neither the panel nor the target names one)")
            expr = t.get("expr")
            if isinstance(expr, str) and expr.strip():
                with_expr += 1
                self.check_expr(twhere, expr)
            else:
                self.problem(twhere, "has no expr")
        if with_expr == 0:
            self.problem(where, "has no target with an expr")

    def check_templating(self, dashboard: dict) -> None:
        for i, var in enumerate((dashboard.get("templating") or {}).get("list") or []):
            if not isinstance(var, dict):
                self.problem(f"variable #{i}", "is not a JSON object")
                continue
            where = f"variable {var.get('name')!r}"
            if var.get("type") != "query":
                continue
            self.check_datasource(where, var.get("datasource"))
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if not isinstance(query, str):
                continue
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
            if m:
                self.check_expr(where, m.group(1))
                continue
            m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
            if m:
                self.check_expr(where, m.group(1))

    def check_annotations(self, dashboard: dict) -> None:
        for i, ann in enumerate((dashboard.get("annotations") or {}).get("list") or []):
            if not isinstance(ann, dict):
                continue
            where = f"annotation {ann.get('name')!r}"
            self.check_datasource(where, ann.get("datasource"))
            expr = ann.get("expr") or (ann.get("target") or {}).get("expr")
            if isinstance(expr, str) and expr.strip():
                self.check_expr(where, expr)


def shown(path: Path) -> Path:
    """`path` relative to the working directory when it is below it (shorter messages)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def overlap(a, b) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        default=[REPO / "docker/grafana/dashboards"],
                        help="dashboard JSON files or directories (default: docker/grafana/dashboards)")
    parser.add_argument("--provisioning", type=Path, default=REPO / "docker/grafana/provisioning",
                        help="Grafana provisioning directory (default: docker/grafana/provisioning)")
    args = parser.parse_args()

    problems: list[str] = []
    uids = datasource_uids(args.provisioning, problems)
    check_dashboard_provider(args.provisioning, problems)

    files: list[Path] = []
    for p in args.paths:
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or directory")
    if not files:
        problems.append(f"no dashboard JSON under {', '.join(map(str, args.paths))}")

    dashboard_uids: dict[str, Path] = {}
    for path in files:
        before = len(problems)
        n = DashboardChecker(path, uids, problems).run()
        try:
            uid = json.loads(path.read_text(encoding="utf-8")).get("uid")
        except Exception:
            uid = None
        if isinstance(uid, str) and uid:
            if uid in dashboard_uids:
                problems.append(f"{path}: dashboard uid {uid!r} is also used by {dashboard_uids[uid]}")
            dashboard_uids[uid] = path
        if len(problems) == before:
            print(f"ok   {shown(path)}: {n} panels")

    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"check_dashboards: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_dashboards: {len(files)} dashboard(s) OK, datasource uids: {', '.join(sorted(uids))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
