"""Every finding code `palisade validate` can emit: what it means and what to do about it.

The codes themselves are made where the checks run (the YAML reader, the loader,
the schema, semantics, the Tetragon checks, history and the ladder, object
builds); this is their catalogue, read by renderers that describe a code apart
from one finding of it (SARIF rules, help). tests/reconciler/checks/test_codes.py
scans the sources so that a new code cannot be emitted without an entry here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.findings import Severity

_E, _W = Severity.ERROR, Severity.WARNING


@dataclass(frozen=True)
class Code:
    """One finding code: its usual severity, what is wrong (`summary`, `detail`) and what to do (`fix`)."""

    id: str
    severity: Severity  # the usual one: a few codes are warnings in one situation and errors in another
    summary: str
    detail: str
    fix: str

    @property
    def name(self) -> str:
        """A PascalCase name of the code (`tp-arg-index` → `TpArgIndex`), as SARIF rules carry one."""
        return "".join(part[:1].upper() + part[1:] for part in self.id.split("-"))


def _c(id: str, severity: Severity, summary: str, detail: str, fix: str) -> Code:
    return Code(id, severity, summary, detail, fix)


_ALL = (
    # --- reading files (bpf/yamldocs.py, repository/source.py) -----------------------------------
    _c("unreadable", _E, "A file of the repository cannot be read.",
       "The file exists in the tree but could not be read (too large, a broken symlink, or not a regular file).",
       "Make it a regular YAML file under the size limit, or remove it."),
    _c("empty", _W, "A YAML file holds no document.",
       "The file is empty or only comments, so it contributes nothing to the repository.",
       "Delete the file or add the document it was meant to hold."),
    _c("yaml", _E, "A file is not valid YAML.",
       "The YAML reader refused the file: a syntax error, nesting or alias expansion past the bounds, "
       "a merge key (<<), or a non-scalar mapping key.",
       "Fix the YAML at the given line and column; write merge keys out and keep nesting shallow."),
    _c("binary", _E, "A binary file where YAML was expected.",
       "The file holds NUL bytes near its start, so it is not text.",
       "Remove the binary file from the policy tree, or replace it with the YAML it should be."),
    _c("encoding", _E, "A file is not UTF-8 text.",
       "Policy files are read as UTF-8; this one holds bytes that are not (Latin-1, UTF-16, ...).",
       "Save the file as UTF-8."),
    _c("duplicate-key", _E, "A key appears twice in one YAML mapping.",
       "YAML parsers disagree on which value wins when a key repeats, so Palisade refuses the file.",
       "Keep one of the two keys."),
    # --- the repository layout (repository/loader.py, repository/schema.py) ----------------------
    _c("wrong-folder", _E, "A document is in a folder that does not hold its kind.",
       "Each kind lives in its own folder (Repository in palisade.yaml, Groups in scopes/, Packs and their "
       "TracingPolicies in packs/<pack>/, Rules in rules/, Enforcements in enforcement/, Rollouts in staging/).",
       "Move the document to the folder for its kind."),
    _c("invalid", _E, "A schema-valid document cannot be read into the repository model.",
       "The document passed the schema but a value could not be interpreted (for example a duration or a scope).",
       "Fix the value the message names."),
    _c("pack-missing", _E, "A pack folder has policies but no pack.yaml.",
       "TracingPolicies under packs/<pack>/ belong to a pack, which pack.yaml (kind: Pack) declares.",
       "Add packs/<pack>/pack.yaml with kind: Pack, or move the policies into an existing pack."),
    _c("pack-name", _E, "A pack's name differs from its folder.",
       "A pack is identified by its folder; metadata.name in pack.yaml must be the folder's name.",
       "Rename the pack or its folder so that they match."),
    _c("schema", _E, "A document does not match the schema of its kind.",
       "A field is missing, unknown, of the wrong type or outside its allowed values (Palisade's kinds, and "
       "Tetragon's TracingPolicy CRD for policies).",
       "Fix the field at the given line; the message names what the schema expects."),
    _c("unknown-kind", _E, "A document of an apiVersion/kind Palisade does not know.",
       "Only palisade.dev/v1 kinds (Repository, Group, Pack, Rule, Enforcement, Rollout) and cilium.io "
       "TracingPolicy/TracingPolicyNamespaced belong in a policy repository.",
       "Fix the apiVersion or kind, or move the file out of the policy tree."),
    # --- whole-repository semantics (checks/semantics.py) ----------------------------------------
    _c("no-repository", _E, "palisade.yaml (kind: Repository) is missing.",
       "Every policy repository has a palisade.yaml naming the repository, its reviewers and approval rules.",
       "Add palisade.yaml at the root of the policy repository (see example-repo/)."),
    _c("reviewer-key", _E, "A reviewer's or contributor's key is not an OpenSSH public key.",
       "Signatures are checked against these keys; a key that does not parse can verify nothing.",
       "Put the person's public key line (e.g. 'ssh-ed25519 AAAA... user@host') in spec.reviewers[].key."),
    _c("shared-key", _E, "Two people share one signing key.",
       "A signature with a shared key cannot tell who wrote or approved a commit.",
       "Give each reviewer and contributor a key of their own."),
    _c("unknown-group", _E, "A scope names a group that scopes/ does not define.",
       "Scopes and rollout stages refer to groups by name; this name is not defined.",
       "Define the group in scopes/, or fix the name."),
    _c("unknown-pack", _E, "An Enforcement names a pack that does not exist.",
       "An Enforcement assigns a pack under packs/ to scopes; the pack it names is missing.",
       "Fix spec.pack, or add the pack under packs/."),
    _c("duplicate-enforcement", _E, "A pack has more than one Enforcement.",
       "Each pack's assignments live in one Enforcement so that its ladder state per scope is unambiguous.",
       "Merge the Enforcements of the pack into one file."),
    _c("duplicate-scope", _E, "A scope is assigned twice in one Enforcement.",
       "Two assignments of the same scope would give it two ladder states.",
       "Keep one assignment per scope."),
    _c("not-enforcement-capable", _E, "A pack that cannot enforce is assigned past observe.",
       "The pack is not enforcementCapable (its policies only observe), so only state observe is allowed.",
       "Set the assignment's state to observe, or make the pack enforcementCapable."),
    _c("empty-pack", _W, "A pack holds no TracingPolicy.",
       "The pack renders to nothing on any scope.",
       "Add a TracingPolicy to the pack's folder, or remove the pack."),
    _c("template", _E, "A rule's template or parameters are wrong.",
       "The rule names a template that does not exist, passes parameters the template does not take or of "
       "the wrong form, or is `custom` without an inline spec.policy.",
       "Fix spec.template or spec.params as the message says (palisade generate lists templates)."),
    _c("exception-expired", _W, "A rule's exception has expired.",
       "Past its expiry date the exception no longer applies: the rule acts on that binary again.",
       "Renew the exception with a new expires date, or remove it."),
    _c("exception-expiring", _W, "A rule's exception expires soon.",
       "Once it expires the rule acts on that binary again.",
       "Renew the exception before it expires if it is still needed."),
    _c("too-many-exceptions", _E, "A rule's exceptions need more selectors than Tetragon allows.",
       "Each exception becomes a selector of the rendered policy and Tetragon takes at most 5 per hook.",
       "Group binaries that share a parent binary, or drop exceptions."),
    _c("duplicate-stage", _E, "A rollout stage name appears more than once.",
       "Stages are tracked by name; a repeated name makes the rollout's progress ambiguous.",
       "Give each stage a unique name."),
    _c("rest-not-last", _E, "A stage other than the last takes 'rest'.",
       "rest: true means every sensor not in an earlier stage, so only the last stage may take it.",
       "Move rest: true to the last stage."),
    _c("empty-stage", _E, "A rollout stage names no sensors.",
       "A stage selects sensors by ids, groups, matchLabels or rest: true; this one selects none.",
       "Give the stage sensors, groups, matchLabels or rest: true, or remove it."),
    _c("duplicate-rollout", _E, "More than one Rollout in staging/.",
       "The fleet follows one staging plan.",
       "Keep one Rollout."),
    _c("duplicate-name", _E, "A name is used twice.",
       "Names are unique per kind, and TracingPolicies and rules share one namespace because nodes load "
       "policies by name.",
       "Rename one of the two."),
    # --- rendering and the engine (checks/validate.py, publish/objects.py) -----------------------
    _c("render", _E, "The repository cannot be rendered into TracingPolicies.",
       "Every check passed, but rendering the packs and rules for their scopes failed.",
       "Read the message; it names the value rendering could not use."),
    _c("engine-unsupported", _W, "No Palisade agent can load this policy.",
       "The policy is valid for Tetragon but uses something outside the Palisade engine's subset, on any "
       "kernel; agents will report it refused.",
       "Rewrite the policy within the engine's subset (the message says what is outside it), or accept "
       "that only Tetragon nodes run it."),
    _c("object-compile", _E, "A policy's BPF object does not compile.",
       "With --objects, each policy's CO-RE object is built as the reconciler will build it; this one fails.",
       "Fix the policy so that its hook and filters compile (the message holds the compiler's reason)."),
    # --- Tetragon's load-time checks (checks/tpcheck.py) -----------------------------------------
    _c("tp-arg-index", _E, "A selector or sizeArgIndex refers to an argument the hook does not declare.",
       "matchArgs, matchData, matchReturnArgs and sizeArgIndex point at hook arguments by index; Tetragon "
       "refuses a policy whose index names no declared argument.",
       "Declare the argument in the hook's args, or fix the index (sizeArgIndex counts from 1)."),
    _c("tp-operator-type", _E, "An operator does not fit the argument's type.",
       "Tetragon only accepts some operators per argument type (string operators on strings, ports and "
       "addresses on sockets, ...).",
       "Use an operator that fits the type, or declare the argument with the type it has."),
    _c("tp-value", _E, "A value the operator cannot parse.",
       "An address, port, integer, namespace or range in values does not parse for this operator.",
       "Write the value in the form the operator takes (the message shows it)."),
    _c("tp-too-many-values", _E, "More values than the operator takes.",
       "Integer comparisons and ranges hold at most 4 values in Tetragon's BPF maps.",
       "Split the filter into several selectors, or use a list (list:NAME)."),
    _c("tp-too-many-selectors", _E, "More than 5 selectors on one hook.",
       "Tetragon's BPF programs hold at most 5 selectors per hook.",
       "Split the hook, or merge selectors that have the same actions."),
    _c("tp-too-many-actions", _E, "More than 3 actions in one selector.",
       "Tetragon parses at most 3 matchActions per selector.",
       "Keep at most 3 actions, or split the selector."),
    _c("tp-too-many-filters", _E, "More than 5 matchArgs and matchData filters in one selector.",
       "Tetragon takes at most 5 argument filters per selector.",
       "Split the selector."),
    _c("tp-match-binaries", _E, "matchBinaries or matchParentBinaries misused.",
       "A selector takes one matchBinaries and one matchParentBinaries entry, and followChildren only with "
       "the In and NotIn operators.",
       "Merge the entries' values into one, or fix the operator."),
    _c("tp-namespaces", _E, "matchNamespaces or matchNamespaceChanges past Tetragon's limits.",
       "A selector takes at most 10 namespace filters of 4 values each, and one matchNamespaceChanges.",
       "Reduce the namespace filters or split the selector."),
    _c("tp-capability", _E, "An unknown capability name.",
       "matchCapabilities values are Linux capability names (CAP_SYS_ADMIN, ...).",
       "Fix the capability's name."),
    _c("tp-override", _E, "Override where the hook cannot override the call's result.",
       "Override needs a hook whose return value the kernel lets BPF replace (error-injectable functions, "
       "security_ hooks, syscalls).",
       "Use Sigkill or another action, or hook a function that can be overridden."),
    _c("tp-action-arg", _E, "An action without the argument it needs.",
       "Signal needs argSig, Override argError, GetUrl argUrl and DnsLookup argFqdn.",
       "Add the argument the message names."),
    _c("tp-action", _E, "An action or option used where Tetragon refuses it.",
       "rateLimit applies to Post only and Set to usdts hooks only.",
       "Move the option or action to where it applies, or remove it."),
    _c("tp-enforcer", _E, "NotifyEnforcer without spec.enforcers.",
       "NotifyEnforcer hands the decision to an enforcer program, which spec.enforcers declares.",
       "Add spec.enforcers listing the syscalls to enforce, or use another action."),
    _c("tp-list", _E, "'list:NAME' names no list of spec.lists.",
       "A hook call or a value refers to a list that the policy does not define.",
       "Define the list in spec.lists, or fix its name."),
    _c("tp-macro", _E, "A selector macro naming no entry of spec.selectorsMacros.",
       "The macro the selector uses is not defined in the policy.",
       "Define the macro in spec.selectorsMacros, or fix its name."),
    _c("tp-return", _W, "Return selectors on a hook that does not hook the return.",
       "matchReturnArgs and matchReturnActions only apply with return: true and a returnArg; Tetragon "
       "ignores them otherwise (a return: true without returnArg is an error).",
       "Set return: true and returnArg on the hook, or remove the return selectors."),
    _c("tp-duplicate-hook", _W, "The same hook twice in one policy.",
       "Two hooks on the same call or event in one policy load two programs where one would do.",
       "Merge their selectors into one hook."),
    _c("tp-policy-mode", _E, "A policy-mode option that is not a mode, or monitor with enforcing actions.",
       "policy-mode takes enforce or monitor; with monitor, enforcing actions never act (a warning).",
       "Fix the mode's value, or drop the enforcing actions of a monitoring policy."),
    # --- history: the ladder and approvals (checks/history.py, checks/ladder.py) -----------------
    _c("not-descendant", _E, "The revision does not descend from the accepted revision.",
       "The reconciler only moves forward along the branch it tracks; history was rewritten or diverged.",
       "Rebase the change onto (or merge) the accepted revision."),
    _c("ladder-skip", _E, "A unit moved forward more than one ladder step in one change.",
       "The ladder is observe → enforce_ready → enforced; each forward step is reviewed on its own.",
       "Move one step per change."),
    _c("new-not-observe", _E, "A new unit did not start at observe.",
       "Every pack assignment and rule starts at observe so that its events are seen before it acts.",
       "Add it at state observe, then advance it in later changes."),
    _c("unsigned", _E, "A forward ladder step whose introducing commit is not signed.",
       "Forward steps need a reviewer's signed approval (a signed commit or merge).",
       "Have a reviewer sign the commit or the merge (git commit -S / git merge -S with their SSH key)."),
    _c("bad-signature", _E, "A forward ladder step whose signature does not verify.",
       "The commit carries a signature, but it does not verify against the signer's key.",
       "Re-sign the commit with the key listed in palisade.yaml."),
    _c("not-reviewer", _E, "A forward ladder step signed by someone who is not a reviewer.",
       "Only keys in spec.reviewers of palisade.yaml approve forward steps.",
       "Have a listed reviewer sign, or add the signer to spec.reviewers (itself a reviewed change)."),
    _c("self-approved", _E, "A forward ladder step approved by the reviewer who wrote it.",
       "A reviewer cannot approve a change they authored a commit of.",
       "Have another reviewer approve it."),
    _c("insufficient-approvals", _E, "Fewer distinct reviewers approved than approvals.required.",
       "palisade.yaml requires more distinct reviewers' approvals for forward steps.",
       "Get the approvals of more reviewers."),
    _c("unproven-author", _E, "One reviewer approved, but a commit of the change has no listed author.",
       "A commit not signed by a listed person may have been written by the approving reviewer, so two "
       "reviewers must approve.",
       "Sign the commits with a reviewer's or contributor's key, or get a second approval."),
    _c("unapproved-tightening", _E, "A unit at enforce_ready or enforced acts on more without approval.",
       "A policy changed, an exception was removed or a group widened for a unit that acts, so it needs the "
       "same approval as a forward step.",
       "Have a reviewer approve the change, or make it at observe first."),
    _c("new-policy-enforcing", _E, "A policy new to a pack that is at enforce_ready or enforced.",
       "A new policy would act at once without being observed.",
       "Add it in a pack (or rule) at observe first, or get a reviewer's approval."),
    _c("reviewers-unapproved", _E, "Reviewers, the approval rule or the observation window changed unapproved.",
       "Changes to who approves and how are approved by the previous reviewers.",
       "Have the previous reviewers approve the change of palisade.yaml."),
    _c("window", _E, "A forward step before the unit spent the observation window in its state.",
       "A unit stays in a state at least minObservation (palisade.yaml) before it moves forward, so its "
       "events are seen first.",
       "Wait until the window has passed, then advance it."),
    _c("approval-pending", _W, "A forward step still awaits a reviewer's approval (pull-request mode).",
       "The approval does not exist yet; the merge must be signed by a reviewer, or the reconciler will "
       "reject it.",
       "Have the reviewer named in the message sign the merge."),
)

CODES: Mapping[str, Code] = {c.id: c for c in _ALL}


def describe(code: str) -> Code:
    """The catalogue's entry, or a generic one for a code it does not hold (never raises: a renderer asks)."""
    known = CODES.get(code)
    if known is not None:
        return known
    return Code(code, Severity.ERROR, f"Finding {code}.", f"A {code} finding of palisade validate.",
                "Read the finding's message.")
