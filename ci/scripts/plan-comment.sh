#!/bin/sh
# `palisade plan` as a pull/merge request comment: the plan rendered as Markdown, posted to the forge,
# replacing the previous plan comment (found by its first line, the marker) rather than adding one per push.
#
# Environment:
#   PALISADE_REPO       the policy repository (default: .)
#   PALISADE_BASE       the base revision of the pull request (required)
#   PALISADE_HEAD       the revision to plan (default: HEAD)
#   PALISADE_PLAN_FILE  where the Markdown is written (default: palisade-plan.md)
#   PALISADE_FORGE      github | gitlab | none (none: write the file only)
#   github: GITHUB_TOKEN, GITHUB_REPOSITORY (owner/name), PALISADE_PR (the pull request's number),
#           GITHUB_API_URL (default: https://api.github.com)
#   gitlab: PALISADE_GITLAB_TOKEN (a token with the api scope: CI_JOB_TOKEN cannot write notes),
#           CI_API_V4_URL, CI_PROJECT_ID, CI_MERGE_REQUEST_IID (all three set by GitLab CI)
#   PALISADE, PALISADE_PYTHON  the palisade and python commands (default: palisade, python3)
#
# Exit codes: 0 the comment was posted (whether or not the change does anything), 2 the plan could not be
# made or the forge refused the comment.
set -u

MARKER='<!-- palisade-plan -->'
repo=${PALISADE_REPO:-.}
out=${PALISADE_PLAN_FILE:-palisade-plan.md}
forge=${PALISADE_FORGE:-none}
palisade=${PALISADE:-palisade}
python=${PALISADE_PYTHON:-python3}

fail() {
    echo "plan-comment: $*" >&2
    exit 2
}

[ -n "${PALISADE_BASE:-}" ] || fail "PALISADE_BASE (the pull request's base revision) is not set"
status=0
$palisade plan --repo "$repo" --base "$PALISADE_BASE" --head "${PALISADE_HEAD:-HEAD}" -o markdown >"$out" \
    || status=$?
[ "$status" -le 1 ] || fail "palisade plan failed (exit $status)"  # 0 no change, 1 changes
cat "$out"

case $forge in
none) exit 0 ;;
github)
    api=${GITHUB_API_URL:-https://api.github.com}
    : "${GITHUB_TOKEN:?}" "${GITHUB_REPOSITORY:?}" "${PALISADE_PR:?}"
    list="$api/repos/$GITHUB_REPOSITORY/issues/$PALISADE_PR/comments?per_page=100"
    create="$api/repos/$GITHUB_REPOSITORY/issues/$PALISADE_PR/comments"
    update="$api/repos/$GITHUB_REPOSITORY/issues/comments"
    auth="Authorization: Bearer $GITHUB_TOKEN"
    replace=PATCH
    ;;
gitlab)
    : "${PALISADE_GITLAB_TOKEN:?}" "${CI_API_V4_URL:?}" "${CI_PROJECT_ID:?}" "${CI_MERGE_REQUEST_IID:?}"
    notes="$CI_API_V4_URL/projects/$CI_PROJECT_ID/merge_requests/$CI_MERGE_REQUEST_IID/notes"
    list="$notes?per_page=100&sort=desc"
    create=$notes
    update=$notes
    auth="PRIVATE-TOKEN: $PALISADE_GITLAB_TOKEN"
    replace=PUT
    ;;
*) fail "PALISADE_FORGE must be github, gitlab or none, not '$forge'" ;;
esac

tmp=$(mktemp -d) || fail "cannot make a temporary directory"
trap 'rm -rf "$tmp"' EXIT
"$python" -c 'import json, sys; json.dump({"body": open(sys.argv[1], encoding="utf-8").read()}, sys.stdout)' \
    "$out" >"$tmp/body.json" || fail "cannot encode the comment"

call() {  # METHOD URL [BODY-FILE]: the response on stdout; curl fails on an HTTP error
    if [ $# -ge 3 ]; then
        curl -sS --fail -X "$1" -H "$auth" -H "Accept: application/json" \
            -H "Content-Type: application/json" --data-binary "@$3" "$2"
    else
        curl -sS --fail -X "$1" -H "$auth" -H "Accept: application/json" "$2"
    fi
}

call GET "$list" >"$tmp/comments.json" || fail "cannot list the comments ($list)"
existing=$("$python" -c '
import json, sys
for c in json.load(open(sys.argv[1], encoding="utf-8")):
    if str(c.get("body") or "").startswith(sys.argv[2]):
        print(c["id"])
        break
' "$tmp/comments.json" "$MARKER") || fail "cannot read the comments the forge listed"

if [ -n "$existing" ]; then
    call "$replace" "$update/$existing" "$tmp/body.json" >/dev/null || fail "cannot update comment $existing"
    echo "plan-comment: updated comment $existing" >&2
else
    call POST "$create" "$tmp/body.json" >/dev/null || fail "cannot post the comment ($create)"
    echo "plan-comment: posted the plan" >&2
fi
