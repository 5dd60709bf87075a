"""`palisade install --export`: the Kubernetes manifests of the agent (DaemonSet) and the reconciler
(Deployment), printed as multi-document YAML (or, with `-o json`, one `List`), to review, commit to
a repository of manifests, or pipe to `kubectl apply -f -`. Nothing is applied: palisade holds no
cluster credentials.

Two objects are left to the operator, so that no key ever passes through this output:
  kubectl -n NAMESPACE create configmap palisade-pubkey --from-file=palisade.pub
  kubectl -n NAMESPACE create secret generic palisade-signing-key --from-file=palisade.key

Exit codes: 0 printed; 2 usage error (a bad flag, a missing --repo-url for the reconciler).
"""
from __future__ import annotations

import argparse
import io
import json
import re
from typing import Any

from reconciler.errors import UsageError
from reconciler.serve.kubernetes import Component, InstallOptions, Manifest, manifests

__all__ = ["register", "render_json", "render_yaml"]

# Where a cluster can fetch from: a URL git understands, or scp-like user@host:path (never a local path).
_REPO_URL = re.compile(r"^((https?|ssh|git)://[^\s/]+/\S+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+)$")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("install", help="print the Kubernetes manifests of the agent and the reconciler",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="store_true", required=True,
                   help="print the manifests (the only mode: nothing is applied)")
    p.add_argument("--namespace", default=InstallOptions.namespace, help="namespace (default: %(default)s)")
    p.add_argument("--image", default=InstallOptions.image,
                   help="image holding both `palisade` and `palisade-agent` (default: %(default)s)")
    p.add_argument("--repo-url", help="the policy repository the reconciler tracks (https://, ssh:// or "
                                      "user@host:path); required with the reconciler")
    p.add_argument("--branch", default=InstallOptions.branch, help="tracked branch (default: %(default)s)")
    p.add_argument("--components", default="agent,reconciler", metavar="LIST",
                   help="comma-separated: agent, reconciler (default: %(default)s)")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format")
    p.set_defaults(func=_run)


def _components(text: str) -> frozenset[Component]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = {c.value for c in Component}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UsageError(f"--components {text!r}: expected a comma-separated list of {', '.join(sorted(known))}")
    return frozenset(Component(n) for n in names)


def _options(args: argparse.Namespace) -> InstallOptions:
    components = _components(args.components)
    if Component.RECONCILER in components:
        if not args.repo_url:
            raise UsageError("--repo-url is required with the reconciler (or --components agent)")
        if not _REPO_URL.match(args.repo_url):
            raise UsageError(f"--repo-url {args.repo_url!r}: a URL the cluster can fetch (https://, ssh:// or "
                             "user@host:path), not a local path")
    try:
        return InstallOptions(namespace=args.namespace, image=args.image, repo_url=args.repo_url,
                              branch=args.branch, components=components)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    objects = manifests(_options(args))
    print(render_json(objects) if args.output == "json" else render_yaml(objects), end="")
    return 0


def render_json(objects: tuple[Manifest, ...]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [m.body for m in objects]}, indent=2) + "\n"


def render_yaml(objects: tuple[Manifest, ...]) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.width = 4096  # a note stays on its line
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    for m in objects:
        out.write("---\n")
        if m.why:
            out.write(f"# {m.kind} {m.name}: {m.why}\n")
        yaml.dump(_commented(m), out)
    return out.getvalue()


def _commented(m: Manifest) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import LiteralScalarString

    def convert(v: Any) -> Any:
        if isinstance(v, dict):
            return CommentedMap((k, convert(x)) for k, x in v.items())
        if isinstance(v, list):
            return CommentedSeq(convert(x) for x in v)
        if isinstance(v, str) and "\n" in v:
            return LiteralScalarString(v)  # agent.yaml reads as the file it is
        return v

    doc = convert(m.body)
    for path, text in m.notes:
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        target = parent[key]  # a note on a path the body lacks is a bug here (KeyError), not a silent loss
        if isinstance(parent, CommentedSeq) and isinstance(target, CommentedMap) and target:
            parent, key = target, next(iter(target))  # `- name: x  # note` rather than a bare `- # note`
        parent.yaml_add_eol_comment(f"# {text}", key)
    return doc
