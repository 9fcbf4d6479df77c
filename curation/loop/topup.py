"""`curate topup`: new plans for the compositions review left short, appended to plans.jsonl.

Each round asks, per short composition, for the shortfall divided by its acceptance rate (observed
reviews plus a prior, `curation.prior_acceptance` weighing `prior_reviews` reviews), less the
candidates still pending, so a second top-up before anything new is reviewed adds nothing. A
budget (`--max-new` candidates) is shared out one plan at a time, neediest composition first.
New plans get plan numbers after the existing ones (new layouts and seeds) and backgrounds the
composition has not had yet; they are appended, never rewritten, so every existing candidate keeps
its id and shard (`generators.run` lays work out in plan order) and `curate generate`, `index`
and `review push` make, index and push just the new ones.

Rounds are recorded in plans/topups.jsonl with the rejected candidates' most common review reasons
per composition: names from the labeling config's list only (`read_shape` drops any other text,
which would be an annotator's words pasted into a prompt). The LLM planner puts those reasons in
its prompt, the rule-based one has no place for them (they are only recorded). A composition none
of whose candidates was accepted for export in its last `give_up_rounds` rounds (the plans `curate plan` made count as its first round) stops the top-up
with its most common rejection reason instead of asking again.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from curation.core.config import MAX_NEW_PER_ROUND
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.records import LayoutPlan, content_id
from curation.core.workspace import Workspace, atomic_write_text
from curation.loop.targets import Composition, CompositionState, Shape, composition_key, read_shape

if TYPE_CHECKING:
    from generators.compositions import CompositionPick

TOPUPS_FILE = "topups.jsonl"
MAX_REASONS = 3
"""Review reasons handed to the planner per composition, most common first."""


@dataclass
class TopupReport:
    """What one round added, per composition (by '+'-joined key)."""

    round: int
    planner: str
    seeds_per_plan: int
    asked: dict[str, int] = field(default_factory=dict)
    """Candidates wanted before the budget."""
    plans: dict[str, int] = field(default_factory=dict)
    """Plans added."""
    avoid: dict[str, list[str]] = field(default_factory=dict)
    max_new: int = 0

    @property
    def new_plans(self) -> int:
        return sum(self.plans.values())

    def summary(self) -> str:
        if not self.asked:
            return "nothing to top up: every composition meets its target or has enough candidates pending review"
        made = self.new_plans * self.seeds_per_plan
        lines = [
            f"top-up round {self.round}: {self.new_plans} new plans ({made} candidates) appended to plans.jsonl"
        ]
        for key, asked in self.asked.items():
            added = self.plans.get(key, 0) * self.seeds_per_plan
            cut = f", budget --max-new {self.max_new}" if added < asked else ""
            lines.append(f"  {key}: +{added} candidates (asked {asked}{cut})")
        if self.avoid:
            use = (
                "put in the LLM prompt"
                if self.planner == "llm"
                else "recorded only: the rules planner has no prompt"
            )
            lines.append(f"  rejection reasons ({use}): plans/{TOPUPS_FILE}")
        if self.new_plans:
            lines.append(
                "next: curate generate, curate index, curate review push (only the new ones are made)"
            )
        return "\n".join(lines)


def read_rounds(ws: Workspace) -> list[dict]:
    """The recorded top-up rounds, oldest first.

    A round is recorded before its plans are written; a last round whose plans are not all in
    plans.jsonl was killed in between and never happened (the next top-up asks again).
    """
    path = ws.plans_path.parent / TOPUPS_FILE
    if not path.exists():
        return []
    rounds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = {plan_id for ids in rounds[-1]["plans"].values() for plan_id in ids} if rounds else set()
    if not last <= {plan.plan_id for plan in ws.plans()}:
        rounds.pop()
    return rounds


def _rounds_of(shape: Shape, rounds: list[dict]) -> dict[Composition, list[list[str]]]:
    """Each composition's plan ids by round: round 0 is every plan no top-up added."""
    number = {
        pid: i + 1 for i, entry in enumerate(rounds) for pids in entry["plans"].values() for pid in pids
    }
    grouped: dict[Composition, dict[int, list[str]]] = {}
    for plan_id, composition in shape.plan_compositions.items():
        grouped.setdefault(composition, {}).setdefault(number.get(plan_id, 0), []).append(plan_id)
    return {c: [by_round[r] for r in sorted(by_round)] for c, by_round in grouped.items()}


def check_not_hopeless(shape: Shape, state: CompositionState, rounds: list[list[str]], limit: int) -> None:
    """Refuse to plan again for a composition whose last `limit` rounds were all reviewed, none accepted for export.

    Raises:
        CurateError: naming the composition and its most common rejection reason.
    """
    last = rounds[-limit:]
    if len(last) < limit:
        return
    for plan_ids in last:
        for plan_id in plan_ids:
            outcome = shape.plans[plan_id]
            if not outcome.items or outcome.reviewed < outcome.items or outcome.accepted:
                return
    if state.reasons:
        reason, count = max(state.reasons.items(), key=lambda kv: (kv[1], kv[0]))
        why = f"most common rejection reason: {reason!r} ({count} of {state.rejected} rejected)"
    else:
        why = "reviewers gave no reason"
    raise CurateError(
        f"composition {state.key} cannot reach its target of {state.target}: no candidate of its last "
        f"{limit} rounds was accepted for export ({why}). Change what it is asked for (its concepts in "
        "layout.compositions_file, the layout settings or curation.per_composition) before topping up again, "
        "or raise curation.give_up_rounds"
    )


def _share_budget(short: list[CompositionState], plans_wanted: dict[str, int], budget: int) -> Counter[str]:
    """Plans per composition: one at a time in turn, neediest first, until the budget or the need ends."""
    given: Counter[str] = Counter()
    order = sorted(short, key=lambda s: (-s.to_make, s.key))
    while budget > 0 and any(given[s.key] < plans_wanted[s.key] for s in order):
        for state in order:
            if budget > 0 and given[state.key] < plans_wanted[state.key]:
                given[state.key] += 1
                budget -= 1
    return given


def _picks(
    ws: Workspace, plans: list[LayoutPlan], given: Counter[str], states: dict[str, CompositionState]
) -> list[tuple[int, CompositionPick]]:
    """(plan number, composition) for every new plan: numbers after the existing plans, unused backgrounds first."""
    from generators.compositions import BACKGROUNDS, CompositionPick, pool_key

    config = ws.config.layout
    key = pool_key(list(ws.concepts().values()), config)
    k = len(plans)
    backgrounds: dict[Composition, list[str]] = {}
    for plan in plans:
        backgrounds.setdefault(tuple(sorted(plan.concepts)), []).append(plan.background)
    picks = []
    for name, count in given.items():
        concepts = states[name].concepts
        used = backgrounds.get(concepts, [])
        rng = np.random.default_rng(int(content_id({"seed": config.seed, "composition": concepts}, 8), 16))
        scenes = [BACKGROUNDS[i] for i in rng.permutation(len(BACKGROUNDS))]
        fresh = [b for b in scenes if b not in used] or scenes
        for i in range(count):
            order = np.random.default_rng([config.seed, k]).permutation(len(concepts))
            picks.append(
                (
                    k,
                    CompositionPick(
                        concepts=tuple(concepts[j] for j in order),
                        background=fresh[i % len(fresh)],
                        variant=len(used) + i,
                        key=key,
                    ),
                )
            )
            k += 1
    return picks


@writes("plans")
def topup(ws: Workspace, max_new: int | None = None, progress: ProgressFn = no_progress) -> TopupReport:
    """Append plans for every short composition and record the round; see the module docstring.

    Args:
        ws: The workspace, planned (`curate plan`) and with targets in its [curation] section.
        max_new: Most new candidates this round; None means `curation.max_new`.
        progress: Handed to the planner.

    Raises:
        CurateError: no targets or no plans, a budget below one plan, or a hopeless composition.
    """
    from generators.layout import plan_for_compositions

    config = ws.config.curation
    budget = config.max_new if max_new is None else max_new
    seeds = ws.config.generate.seeds_per_plan
    if not 1 <= budget <= MAX_NEW_PER_ROUND:
        raise CurateError(
            f"--max-new must be between 1 and {MAX_NEW_PER_ROUND:,} new candidates per round (got {budget:,}); "
            "top up more in several rounds"
        )
    existing = ws.plans()
    if not existing:
        raise CurateError(f"no layout plans in {ws.plans_path}; run `curate plan` first")
    shape = read_shape(ws)
    if not shape.targets.any:
        raise CurateError(
            f"no targets set: put per_composition, per_concept or buckets under [curation] in {ws.config_path}"
        )
    rounds = read_rounds(ws)
    report = TopupReport(
        round=len(rounds) + 1, planner=ws.config.layout.planner, seeds_per_plan=seeds, max_new=budget
    )
    short = [s for s in shape.compositions if s.to_make > 0]
    by_composition = _rounds_of(shape, rounds)
    for state in short:
        check_not_hopeless(shape, state, by_composition.get(state.concepts, []), config.give_up_rounds)
    if not short:
        return report
    report.asked = {s.key: s.to_make for s in sorted(short, key=lambda s: (-s.to_make, s.key))}
    wanted = {s.key: math.ceil(s.to_make / seeds) for s in short}
    given = _share_budget(short, wanted, budget // seeds)
    if not given:
        raise CurateError(
            f"--max-new {budget} is less than one plan ({seeds} candidates with generate.seeds_per_plan)"
        )
    states = {s.key: s for s in short}
    report.avoid = {
        s.key: [r for r, _ in sorted(s.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]]
        for s in short
        if s.reasons and given[s.key]
    }
    avoid = {states[name].concepts: reasons for name, reasons in report.avoid.items()}
    known = {p.plan_id for p in existing}
    new: list[LayoutPlan] = []
    for plan in plan_for_compositions(ws, _picks(ws, existing, given, states), avoid, progress):
        if plan.plan_id not in known:
            known.add(plan.plan_id)
            new.append(plan)
    added: dict[str, list[str]] = {}
    for plan in new:
        added.setdefault(composition_key(tuple(plan.concepts)), []).append(plan.plan_id)
    report.plans = {name: len(ids) for name, ids in added.items()}
    entry = {"round": report.round, "plans": added, "asked": report.asked, "avoid": report.avoid,
             "planner": report.planner, "max_new": budget}  # fmt: skip
    # the round first, its plans last: killed in between, the round is dropped (`read_rounds`) and the
    # next top-up asks again; plans first would leave them pending as round 0, the round unrecorded
    lines = [json.dumps(r, sort_keys=True) + "\n" for r in [*rounds, entry]]
    atomic_write_text(ws.plans_path.parent / TOPUPS_FILE, "".join(lines))
    ws.write_plans(existing + new)
    return report
