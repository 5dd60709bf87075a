#!/bin/sh
# `palisade validate` for CI: a SARIF log for code scanning, optionally a GitLab Code Quality report,
# the findings as text in the job log, and validate's exit code (0 valid, 1 errors, 2 could not run).
#
# Environment:
#   PALISADE_REPO         the policy repository (default: .)
#   PALISADE_BASE         the pull request's base revision: history checks in pull-request mode
#                         (approvals not given yet are warnings); unset: the work tree alone
#   PALISADE_HEAD         the revision validated against PALISADE_BASE (default: HEAD)
#   PALISADE_SARIF        where the SARIF log goes (default: palisade.sarif)
#   PALISADE_CODEQUALITY  where a GitLab Code Quality report goes (default: none written)
#   PALISADE              the palisade command (default: palisade); PALISADE_PYTHON python (default: python3)
set -u

repo=${PALISADE_REPO:-.}
sarif=${PALISADE_SARIF:-palisade.sarif}
palisade=${PALISADE:-palisade}
python=${PALISADE_PYTHON:-python3}

if [ -n "${PALISADE_BASE:-}" ]; then
    set -- --rev "${PALISADE_HEAD:-HEAD}" --base "$PALISADE_BASE" --pending-approvals
else
    set --
fi

status=0
$palisade validate --repo "$repo" "$@" -o sarif >"$sarif" || status=$?
if [ "$status" -ge 2 ]; then
    # validate could not run (its reason is on stderr): no log worth uploading
    rm -f "$sarif"
    echo "palisade validate could not run (exit $status)" >&2
    exit "$status"
fi

# the findings for the job log, and the Code Quality report, both read from the one SARIF log
"$python" - "$sarif" "${PALISADE_CODEQUALITY:-}" <<'PY' || exit 2
import hashlib
import json
import sys
from urllib.parse import unquote

log = json.load(open(sys.argv[1], encoding="utf-8"))
results = log["runs"][0]["results"]
report = []
for r in results:
    where = r["locations"][0]["physicalLocation"]
    path = unquote(where["artifactLocation"]["uri"])
    line = where.get("region", {}).get("startLine", 0)
    column = where.get("region", {}).get("startColumn", 0)
    print(f"{path}:{line}:{column}: {r['level']}[{r['ruleId']}]: {r['message']['text']}")
    key = f"{r['ruleId']}\0{path}\0{line}\0{r['message']['text']}"
    report.append({"description": r["message"]["text"], "check_name": r["ruleId"],
                   "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
                   "severity": "major" if r["level"] == "error" else "minor",
                   "location": {"path": path, "lines": {"begin": max(line, 1)}}})
errors = sum(r["level"] == "error" for r in results)
print(f"{errors} error(s), {len(results) - errors} warning(s)")
if sys.argv[2]:
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
PY
exit "$status"
