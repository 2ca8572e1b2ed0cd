#!/usr/bin/env python3
"""Helm, offline, from PyPI: renders and lints the chart with Helm's own Go SDK.

No `helm` binary can be installed from the registries this project's machines reach, so this
uses `helm-python-sdk` (PyPI), which binds Helm's official Go SDK (the same engine as the CLI)
through ctypes. scripts/helm.sh installs it and runs this file.

    helm.py template CHART [-f VALUES]... [--set-json JSON] [--name N] [--namespace NS]
        the rendered templates as one multi-document YAML stream, in Helm's install order
        (as `helm template` prints them; CRDs under crds/ are not included, as without
        --include-crds)
    helm.py lint CHART [-f VALUES]... [--set-json JSON]
        `helm lint --strict`: prints every finding, exits 1 on any warning or error
    helm.py manifests [--check]
        writes deploy/kubernetes/NAME.yaml from deploy/kubernetes/NAME.values.yaml for each
        values file there (the values file's leading comment becomes the header, then a
        Namespace, then the chart's output), and copies deploy/crds/esi-federation-crds.yaml
        into the chart's crds/; --check only compares and exits 1 on a difference
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import helm_python as helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "charts" / "esi-federation"
PLAIN = ROOT / "deploy" / "kubernetes"

# Helm's InstallOrder (pkg/release/util/kind_sorter.go); other kinds come after, by name.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]

DOC_SPLIT = re.compile(r"^---\s*$", re.MULTILINE)
KIND = re.compile(r"^kind:\s*(\S+)", re.MULTILINE)
NAME = re.compile(r"^metadata:\s*\n(?:[ \t]+.*\n)*?[ \t]+name:\s*(\S+)", re.MULTILINE)


def merged_values(files: list[str], set_json: str | None) -> dict:
    """Values files in order, then --set-json, each merged over the previous (maps deeply)."""
    values: dict = {}
    for f in files:
        values = deep_merge(values, helm.values_from_yaml(Path(f).read_text()) or {})
    if set_json:
        values = deep_merge(values, json.loads(set_json))
    return values


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def documents(text: str) -> list[str]:
    """The non-empty YAML documents of a rendered template."""
    docs = []
    for part in DOC_SPLIT.split(text):
        body = "\n".join(
            line for line in part.strip("\n").splitlines() if line.strip()
        )
        if any(not line.lstrip().startswith("#") for line in body.splitlines()):
            docs.append(body.strip("\n"))
    return docs


def sort_key(item: tuple[str, str]) -> tuple[int, str, str]:
    source, doc = item
    kind = KIND.search(doc)
    kind = kind.group(1) if kind else ""
    name = NAME.search(doc)
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    return (rank, kind if rank == len(INSTALL_ORDER) else "", name.group(1) if name else "")


def template(chart: Path, values: dict, name: str, namespace: str) -> str:
    with helm.Chart.load(str(chart)) as c:
        rendered = c.render(values, name=name, namespace=namespace, is_install=True)
    items = []
    for source, text in sorted(rendered.items()):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt, helpers
        rel = source.split("/", 1)[1] if "/" in source else source
        for doc in documents(text):
            items.append((rel, doc))
    items.sort(key=sort_key)
    return "".join(f"---\n# Source: {src}\n{doc}\n" for src, doc in items)


def lint(chart: Path, values: dict) -> int:
    report = helm.lint(str(chart), values, strict=True)
    worst = 0
    for m in report.get("messages") or []:
        sev = m.get("severity", 0)
        worst = max(worst, sev)
        label = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(sev, "UNKNOWN")
        print(f"[{label}] {m.get('path', '')}: {m.get('error', '')}")
    for e in report.get("errors") or []:
        print(f"[ERROR] {e}")
        worst = 3
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted")
    return 1 if worst >= 2 else 0


def header(values_text: str) -> str:
    lines = []
    for line in values_text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# render:"):
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def plain_manifest(values_file: Path) -> str:
    """What deploy/kubernetes/NAME.yaml must hold for NAME.values.yaml."""
    text = values_file.read_text()
    meta = re.search(r"^# render: release=(\S+) namespace=(\S+)$", text, re.MULTILINE)
    if not meta:
        sys.exit(f"{values_file}: needs a line '# render: release=NAME namespace=NS'")
    release, namespace = meta.group(1), meta.group(2)
    values = helm.values_from_yaml(text) or {}
    ns = f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
    return header(text) + ns + template(CHART, values, release, namespace)


def manifests(check: bool) -> int:
    status = 0
    # The chart's crds/ (which helm installs) is a copy of deploy/crds (`esi-server crds`).
    crds = ROOT / "deploy" / "crds" / "esi-federation-crds.yaml"
    chart_crds = CHART / "crds" / crds.name
    if crds.exists():
        if not chart_crds.exists() or chart_crds.read_text() != crds.read_text():
            if check:
                print(f"{chart_crds.relative_to(ROOT)} differs from {crds.relative_to(ROOT)}: run scripts/helm.sh manifests")
                status = 1
            else:
                chart_crds.parent.mkdir(exist_ok=True)
                chart_crds.write_text(crds.read_text())
                print(f"wrote {chart_crds.relative_to(ROOT)}")
    else:
        print(f"note: {crds.relative_to(ROOT)} is absent: the chart ships no CRDs", file=sys.stderr)
    files = sorted(PLAIN.glob("*.values.yaml"))
    if not files:
        sys.exit(f"no *.values.yaml under {PLAIN}")
    for values_file in files:
        out = PLAIN / values_file.name.replace(".values.yaml", ".yaml")
        want = plain_manifest(values_file)
        have = out.read_text() if out.exists() else None
        if check:
            if have != want:
                print(f"{out.relative_to(ROOT)} differs from the chart's output: run scripts/helm.sh manifests")
                status = 1
        elif have != want:
            out.write_text(want)
            print(f"wrote {out.relative_to(ROOT)}")
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("template", "lint"):
        s = sub.add_parser(cmd)
        s.add_argument("chart", type=Path)
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--set-json")
        s.add_argument("--name", default="esi-federation")
        s.add_argument("--namespace", default="esi-system")
    m = sub.add_parser("manifests")
    m.add_argument("--check", action="store_true")
    a = p.parse_args()
    try:
        if a.cmd == "template":
            sys.stdout.write(template(a.chart, merged_values(a.values, a.set_json), a.name, a.namespace))
            return 0
        if a.cmd == "lint":
            return lint(a.chart, merged_values(a.values, a.set_json))
        return manifests(a.check)
    except helm.HelmError as e:  # a failed render: print Helm's message, not a traceback
        print(f"helm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
