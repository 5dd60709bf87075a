"""Round-trip edits: one value changes, every other byte of a hand-written file stays as it was."""
from __future__ import annotations

import difflib

import pytest

from reconciler.repository import edit, loader, source
from reconciler.repository.edit import EditError, Refusal
from reconciler.repository.model import PolicyRepository, Rule
from wire.values import Scope, State

OBS, READY, ENF = State.OBSERVE, State.ENFORCE_READY, State.ENFORCED

# Comments everywhere, a quoted value, odd indentation, flow and block scopes, trailing spaces,
# a document separator with a comment, and no newline at the end: a re-dump would disturb all of them.
ENFORCEMENT = (
    "# Who enforces the web allowlist, and how hard.   \n"
    "apiVersion: palisade.dev/v1\n"
    "kind: Enforcement\n"
    "metadata:\n"
    "   name: web-lockdown      # three-space indent, on purpose\n"
    "spec:\n"
    "   pack: web-lockdown\n"
    "   assignments:\n"
    "   # canary first\n"
    "   -   scope: {group: canary}   # one node per role\n"
    "       state: 'enforced'   # approved by alice, INC-1\n"
    "   -   scope:\n"
    "          group: web\n"
    "       state: \"observe\"\n"
    "\n"
    "       # end of list\n"
    "   -   scope: {sensor: \"db-legacy-7\"}\n"
    "       state: enforce_ready #tight comment\n"
)

RULES = (
    "# Rules from built-in templates.\n"
    "apiVersion: palisade.dev/v1\n"
    "kind: Rule\n"
    "metadata: {name: no-ptrace}\n"
    "spec:\n"
    "  template: kill-ptrace-attach   # kills the tracer\n"
    "  scope: {group: web}\n"
    "  exceptions:\n"
    "    - binary: /usr/bin/gdb\n"
    "      reason: debugging\n"
    "--- # second rule\n"
    "apiVersion: palisade.dev/v1\n"
    "kind: Rule\n"
    "metadata:\n"
    "  name: no-kmod\n"
    "spec:\n"
    "  template: block-kmod-load\n"
    "  scope: {}\n"
    "  state: enforce_ready\n"
    "  # trailing comment of the document"
)


def changed_lines(before: str, after: str) -> list[str]:
    return [x for x in difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True))
            if x.startswith(("+ ", "- "))]


def test_set_state_touches_exactly_one_line() -> None:
    out = edit.set_state(ENFORCEMENT, kind="pack", name="web-lockdown", scope=Scope(group="web"), state=READY)
    assert changed_lines(ENFORCEMENT, out) == ['-        state: "observe"\n', '+        state: "enforce_ready"\n']
    assert out == ENFORCEMENT.replace('state: "observe"', 'state: "enforce_ready"')


def test_quote_style_and_trailing_comment_kept() -> None:
    out = edit.set_state(ENFORCEMENT, kind="pack", name="web-lockdown", scope=Scope(group="canary"), state=OBS)
    assert out == ENFORCEMENT.replace("state: 'enforced'   # approved", "state: 'observe'   # approved")
    out = edit.set_state(ENFORCEMENT, kind="pack", name="web-lockdown", scope=Scope(sensor="db-legacy-7"),
                         state=ENF)
    assert out == ENFORCEMENT.replace("enforce_ready #tight", "enforced #tight")


def test_crlf_line_endings_survive() -> None:
    crlf = ENFORCEMENT.replace("\n", "\r\n")
    out = edit.set_state(crlf, kind="pack", name="web-lockdown", scope=Scope(group="web"), state=READY)
    assert out == crlf.replace('"observe"', '"enforce_ready"')


def test_rule_in_a_multi_document_file() -> None:
    out = edit.set_state(RULES, kind="rule", name="no-kmod", scope=Scope(), state=ENF)
    assert out == RULES.replace("state: enforce_ready", "state: enforced")
    assert not out.endswith("\n")  # the missing final newline stays missing


def test_rule_without_state_gets_one_line_inserted() -> None:
    out = edit.set_state(RULES, kind="rule", name="no-ptrace", scope=Scope(group="web"), state=READY)
    assert changed_lines(RULES, out) == ["+   state: enforce_ready\n"]
    assert out.index("state: enforce_ready\n") < out.index("  scope: {group: web}")


def test_the_result_loads_with_the_new_state() -> None:
    out = edit.set_state(ENFORCEMENT, kind="pack", name="web-lockdown", scope=Scope(group="web"), state=READY)
    repo = loader.load(source.Snapshot((source.SourceFile("enforcement/web-lockdown.yaml", out.encode()),))).repository
    (e,) = repo.enforcements
    assert [(a.scope.key, a.state) for a in e.assignments] == [
        ("group:canary", ENF), ("group:web", READY), ("sensor:db-legacy-7", READY)]


def test_add_assignment_appends_two_lines_in_the_list_style() -> None:
    out = edit.add_assignment(ENFORCEMENT, pack="web-lockdown", scope=Scope(group="db"))
    assert out == ENFORCEMENT + "   -   scope: {group: db}\n       state: observe\n"
    out = edit.add_assignment(out, pack="web-lockdown", scope=Scope(sensor="odd: id"))
    assert out.endswith('   -   scope: {sensor: "odd: id"}\n       state: observe\n')
    with pytest.raises(EditError, match="already has an assignment at group:db"):
        edit.add_assignment(out, pack="web-lockdown", scope=Scope(group="db"))


def test_add_assignment_before_the_next_document() -> None:
    two = ENFORCEMENT + "---\n# another\napiVersion: palisade.dev/v1\nkind: Enforcement\nmetadata: {name: x}\n" \
        "spec:\n  pack: x\n  assignments:\n    - scope: {}\n      state: observe\n"
    out = edit.add_assignment(two, pack="web-lockdown", scope=Scope())
    assert changed_lines(two, out) == ["+    -   scope: {}\n", "+        state: observe\n"]
    assert out.index("scope: {}\n       state: observe") < out.index("---")


def test_new_enforcement_file_loads() -> None:
    text = edit.new_enforcement("egress", Scope(group="db"))
    repo = loader.load(source.Snapshot((source.SourceFile("enforcement/egress.yaml", text.encode()),))).repository
    assert repo.units() == {next(iter(repo.units())): OBS}
    assert next(iter(repo.units())).scope == Scope(group="db")


def test_edit_errors_are_clear() -> None:
    with pytest.raises(EditError, match="no assignment at group:db"):
        edit.set_state(ENFORCEMENT, kind="pack", name="web-lockdown", scope=Scope(group="db"), state=ENF)
    with pytest.raises(EditError, match="no Enforcement for pack 'other'"):
        edit.set_state(ENFORCEMENT, kind="pack", name="other", scope=Scope(), state=ENF)
    with pytest.raises(EditError, match="scoped to group:web, not fleet"):
        edit.set_state(RULES, kind="rule", name="no-ptrace", scope=Scope(), state=ENF)
    with pytest.raises(EditError, match="cannot parse"):
        edit.set_state("a: [", kind="rule", name="x", scope=Scope(), state=ENF)


def _repo(*rules: str, packs: tuple[str, ...] = ()) -> PolicyRepository:
    from reconciler.repository.model import Pack

    return PolicyRepository(
        None,
        packs=tuple(Pack(p, f"packs/{p}", "", (), True, ()) for p in packs),
        rules=tuple(Rule(r, "rules/r.yaml", "block-kmod-load", Scope(), OBS) for r in rules),
    )


def test_resolve_names() -> None:
    repo = _repo("web", "no-kmod", packs=("web", "egress"))
    assert edit.resolve("no-kmod", repo) == ("rule", "no-kmod")
    assert edit.resolve("egress", repo) == ("pack", "egress")
    assert edit.resolve("pack/web", repo) == ("pack", "web")
    assert edit.resolve("rule/web", repo) == ("rule", "web")
    with pytest.raises(Refusal, match=r"ambiguous.*pack/web or rule/web"):
        edit.resolve("web", repo)
    with pytest.raises(Refusal, match="no pack or rule named 'nope'"):
        edit.resolve("nope", repo)
    with pytest.raises(Refusal, match="no rule named 'egress'"):
        edit.resolve("rule/egress", repo)
    with pytest.raises(Refusal, match="pack/NAME, rule/NAME"):
        edit.resolve("policy/web", repo)


@pytest.mark.parametrize(("now", "verb", "to", "then"), [
    (OBS, "advance", None, READY), (READY, "advance", None, ENF), (READY, "advance", ENF, ENF),
    (ENF, "revert", None, OBS), (ENF, "revert", READY, READY),
])
def test_step_follows_the_ladder(now: State, verb: str, to: State | None, then: State) -> None:
    assert edit.step(now, verb, to) is then  # to=None: the step's default target


@pytest.mark.parametrize(("now", "verb", "to", "refused"), [
    (ENF, "advance", None, "already enforced"),
    (OBS, "advance", ENF, "exactly one step: observe → enforce_ready, not to enforced"),
    (OBS, "revert", None, "already at observe"),
    (OBS, "revert", READY, "ahead of observe"),
])
def test_step_refuses_what_is_off_the_ladder(now: State, verb: str, to: State | None, refused: str) -> None:
    with pytest.raises(Refusal, match=refused):
        edit.step(now, verb, to)
