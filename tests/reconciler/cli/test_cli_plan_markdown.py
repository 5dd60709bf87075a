"""`palisade plan -o markdown`: the plan as a pull-request comment, on real git repositories.

The comment is rendered with a CommonMark renderer (markdown-it-py, HTML allowed, as
forges allow it) and the HTML it yields is inspected: which tags it opens, what text
it shows. Whatever comes from the repository (commit subjects, reviewers' names,
exception paths in diffs, policy names) stays text.
"""
from __future__ import annotations

import html.parser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from test_cli_plan import ADVANCE_WEB, feature, plan

from reconciler.checks import plancomment
from reconciler.checks.ladder import Move, MoveKind
from reconciler.checks.plan import Change, Plan, PolicyChange, Stages, UnitChange
from reconciler.checks.relaxing import Classification
from reconciler.repository.model import UnitKey
from support.policyrepo import ALICE, DEV, PolicyRepo
from wire.values import Scope, State

HOSTILE = "</details><img src=x onerror=alert(1)>"
ALLOWED_TAGS = {"h3", "h4", "p", "ul", "ol", "li", "strong", "em", "code", "pre", "details", "summary"}


class _Html(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.opened.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.closed.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def rendered(markdown: str) -> _Html:
    """The comment as a forge shows it: Markdown to HTML (raw HTML passed through), then parsed."""
    out = _Html()
    out.feed(MarkdownIt("commonmark", {"html": True}).render(markdown))
    return out


def _assert_inert(markdown: str) -> _Html:
    page = rendered(markdown)
    assert set(page.opened) <= ALLOWED_TAGS, set(page.opened) - ALLOWED_TAGS
    assert page.opened.count("details") == page.closed.count("details") == markdown.count("<details>")
    return page


def test_forward_step_comment(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    feature(repo, ADVANCE_WEB, author=ALICE)  # alice wrote it: only bob may approve
    r = plan(repo, "--head", "feature", "-o", "markdown")
    assert r.returncode == 1, r.stderr
    md = r.stdout
    assert md.splitlines()[0] == plancomment.MARKER
    summary = next(line for line in md.splitlines() if line.startswith("**TIGHTENING**"))
    assert "1 unit(s) tightening · 0 relaxing · " in summary and "policies: 1 state only" in summary
    unchanged = int(summary.split(" relaxing · ")[1].split(" unchanged")[0])
    assert unchanged == len(repo_units(repo)) - 1
    assert "- pack `web-lockdown` @ `group:web`: `enforce_ready` → `enforced` (forward, tightening)" in md
    needs = next(line for line in md.splitlines() if "needs approval" in line)
    assert "Bob Reviewer" in needs and "Alice" not in needs and "`enforcement/web-lockdown.yaml`:" in needs
    assert "Approval takes 1 reviewer signature(s) from: Alice Reviewer" in md
    stages = [line for line in md.splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
    assert stages == ["1. `canary` (bake 30m)", "2. `web` (bake 2h)", "3. `fleet` (bake 0s)"]
    assert "<details>" not in md  # only a state moved: no diff to show
    assert "- feature" in md.split("#### Commits")[1]  # the commit's subject
    page = _assert_inert(md)
    assert "Bob Reviewer <bob@example.com>" in "".join(page.text)  # entities render as the text itself


def repo_units(repo: PolicyRepo) -> set[UnitKey]:
    from reconciler.repository import loader, source

    loaded = loader.load(source.from_git(repo.path, "main"))
    return set(loaded.repository.units())


def test_relaxing_change_with_a_diff(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    feature(repo, ("rules/kernel-hardening.yaml", '      expires: "2027-03-31"\n',
                   '      expires: "2027-03-31"\n    - binary: /usr/bin/strace\n      reason: oncall\n'))
    r = plan(repo, "--head", "feature", "-o", "markdown")
    assert r.returncode == 1, r.stderr
    md = r.stdout
    assert "**RELAXING** · 0 unit(s) tightening · 1 relaxing · " in md
    assert "Fast-tracked to every stage at once (`canary`, `web`, `fleet`)" in md
    assert "- none needed (no forward steps)" in md
    page = _assert_inert(md)
    assert page.opened.count("details") == 1
    (block,) = md.split("<details>")[1:]
    assert block.startswith("\n<summary><code>~ ")
    assert "```diff\n" in block and "/usr/bin/strace" in block


def test_no_change_exits_0(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = plan(repo, "-o", "markdown")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(plancomment.MARKER + "\n") and "**No changes**" in r.stdout


def test_errors_exit_2(tmp_path: Path) -> None:
    repo = PolicyRepo.create(tmp_path)
    r = plan(repo, "--head", "no-such-branch", "-o", "markdown")
    assert r.returncode == 2 and r.stdout == ""


def test_repository_text_cannot_break_out(tmp_path: Path) -> None:
    """A reviewer's name, a commit subject and an exception path carrying HTML, Markdown and fences."""
    repo = PolicyRepo.create(tmp_path)
    repo.git.branch("feature")
    repo.edit("palisade.yaml", "name: Bob Reviewer", f"name: \"Bob {HOSTILE} [x](http://evil) @org/team\"")
    repo.edit("rules/kernel-hardening.yaml", '      expires: "2027-03-31"\n',
              '      expires: "2027-03-31"\n    - binary: "/opt/```\\n</details><img src=y>"\n      reason: oncall\n')
    repo.git.commit(f"Relax {HOSTILE} **bold** `code` ``` @everyone", author=DEV,
                    sign=repo.keys["dana"])
    repo.git.checkout("main")
    r = plan(repo, "--head", "feature", "-o", "markdown")
    assert r.returncode == 1, r.stderr
    md = r.stdout
    page = _assert_inert(md)
    text = "".join(page.text)
    assert f"Relax {HOSTILE} **bold** `code` ``` @everyone" in text  # shown as typed, not interpreted
    assert "@everyone" not in md and "@org/team" not in md  # no mention reaches the forge's parser
    assert "</details><img src=y>" in text  # inside the diff's code block


def test_policy_names_are_code() -> None:
    """Names are schema-checked in a repository; the renderer escapes them anyway (the base may be broken)."""
    unit = UnitKey("pack", HOSTILE, Scope(group="we`b"))
    change = PolicyChange(HOSTILE, Change.CHANGED, State.OBSERVE, State.OBSERVE,
                          f"--- a/{HOSTILE}\n+++ b/{HOSTILE}\n-x\n+y\n")
    units = (UnitChange(Move(unit, State.OBSERVE, State.ENFORCE_READY, MoveKind.FORWARD), (change,)),
             UnitChange(Move(unit, None, State.OBSERVE, MoveKind.NEW), (change,)))
    p = Plan(units, (f"group {HOSTILE} added",), Classification(False, [f"{HOSTILE} added"]),
             Stages("default", (HOSTILE,), ("1h",), False, False), unchanged=3)
    md = plancomment.render(p, plancomment.Context(base=HOSTILE, head="feature"))
    page = _assert_inert(md)
    assert page.opened.count("details") == 1  # the second unit has the same diff
    assert "img" not in page.opened
    assert f"{HOSTILE}" in "".join(page.text)


@pytest.mark.parametrize("name", ["`", "``a``", "a`b", " "])
def test_code_spans_hold_backticks(name: str) -> None:
    md = plancomment._code(name)
    page = rendered(md)
    assert page.opened == ["p", "code"] and "".join(page.text).strip() == name.strip()


def test_a_huge_change_fits_the_forge_limit() -> None:
    units = []
    for i in range(400):
        unit = UnitKey("rule", f"rule-{i}", Scope())
        diff = f"--- a/p{i}\n+++ b/p{i}\n" + "".join(f"+line {i} {j}\n" for j in range(40))
        units.append(UnitChange(Move(unit, None, State.OBSERVE, MoveKind.NEW),
                                (PolicyChange(f"p{i}", Change.ADDED, None, State.OBSERVE, diff),)))
    p = Plan(tuple(units), (), Classification(False, ["many added"]), Stages(None, (), (), False, False))
    md = plancomment.render(p, plancomment.Context(base="main", head="feature"))
    assert len(md) <= plancomment.LIMIT
    assert "Diff left out" in md and "run `palisade plan`" in md
    page = rendered(md)
    assert page.opened.count("details") == page.closed.count("details")
