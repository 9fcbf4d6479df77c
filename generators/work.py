"""What the current plans ask `curate generate` to make: one work item per plan and seed, with its id.

Apart from the generation code so that readers of the plan (`curate status`, top-up) compute the
candidate ids without importing what draws images (OpenCV alone took ~0.3 s to import on 2 cores).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from curation.core.errors import CurateError
from curation.core.records import LayoutPlan, content_id
from curation.core.workspace import Workspace
from generators.generate_settings import generate_config, generator_config


@dataclass(frozen=True)
class WorkItem:
    """One candidate to make: where it goes and what defines it."""

    shard: str
    candidate_id: str
    plan: LayoutPlan
    seed: int


def plan_work(
    ws: Workspace, generator: str | None = None, plans: list[LayoutPlan] | None = None
) -> list[WorkItem]:
    """Every candidate the current plans (`ws.plans()` unless given) and config call for, in shard order."""
    config = generate_config(ws, generator)
    if config.shard_size < 1 or config.seeds_per_plan < 1:
        raise CurateError("generate.shard_size and generate.seeds_per_plan must be at least 1")
    gen_config = generator_config(config)
    items = []
    pairs = itertools.product(ws.plans() if plans is None else plans, range(config.seeds_per_plan))
    for index, (plan, seed) in enumerate(pairs):
        cid = content_id(
            {"plan_id": plan.plan_id, "seed": seed, "generator": config.generator, "config": gen_config}
        )
        items.append(
            WorkItem(shard=f"{index // config.shard_size:05d}", candidate_id=cid, plan=plan, seed=seed)
        )
    return items
