"""Making candidates, in a worker: references picked, paste composed, repainted or MSP, captioned, written.

A `CandidateMaker` holds one process's workspace, concepts and loaded backends (a repainter or an
`MSPGenerator`, and a captioner), and turns work items into files: PNG first, then the candidate
JSON, both atomic. A candidate that fails is written as a JSON record with status "failed" and its
reason is returned for counting; it never stops the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from curation.core.devices import resolve_device
from curation.core.paste_record import PASTE_SILHOUETTES, PASTE_THUMBS, encode_silhouettes, paste_thumbnails
from curation.core.records import Box, Candidate, Concept, LayoutPlan, content_id
from curation.core.workspace import Workspace, atomic_write_bytes, atomic_write_text
from generators.compose import compose, pick_reference, procedural_background
from generators.generate_settings import batch_size, check_settings, generate_config, generator_config
from generators.recaption import Captioner, load_captioner, template_caption
from generators.repaint import Repainter, RepaintJob, load_repainter, repaint_prompt
from generators.work import WorkItem

if TYPE_CHECKING:
    from generators.msp.pipeline import MSPGenerator

_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
"""Huffman-only zlib after PNG filtering: measured 24 ms and 239 KB per 512x512 candidate against
35 ms and 281 KB for plain level 1 (PNG encoding is the largest single cost of the offline path)."""


class CandidateFailure(Exception):
    """A candidate-level problem with a short reason used for counting ('unknown_concept')."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def pick_references(
    plan: LayoutPlan, seed: int, concepts: dict[str, Concept]
) -> list[tuple[Concept, int, Box]]:
    """(concept, reference photo index, box) for each box of the plan.

    Seeded by the plan and the seed index, not by the candidate id (which includes the generator):
    the Gen4Gen and the MSP candidate of one plan and seed paste the same photos, so comparing
    them compares the generators, not the photos they happened to start from.
    """
    rng = np.random.default_rng(int(content_id({"plan_id": plan.plan_id, "seed": seed}), 16))
    return [(concepts[b.concept_id], pick_reference(concepts[b.concept_id], rng), b) for b in plan.boxes]


PreparedCandidate = tuple[WorkItem, Candidate, RepaintJob]
"""A prepared candidate: its work item, its record so far, and its paste composition."""


def _batches(prepared: list[PreparedCandidate], size: int) -> Iterator[list[PreparedCandidate]]:
    """Batches of at most `size` sharing one canvas size: a diffusion call denoises one latent shape."""

    def canvas(entry: PreparedCandidate) -> tuple[int, int]:
        return entry[0].plan.width, entry[0].plan.height

    for _, group in itertools.groupby(sorted(prepared, key=canvas), key=canvas):
        same = list(group)
        yield from (same[i : i + size] for i in range(0, len(same), size))


class CandidateMaker:
    """Per-process state: workspace, concepts and backends, loaded once.

    Both generators share the paste composition: Gen4Gen repaints it, MSP starts from it as a
    scaffold and segments by its pasted silhouettes, so one plan gives comparable candidates.
    """

    def __init__(self, root: Path, generator: str | None = None, device: str | None = None):
        self.ws = Workspace(root)
        self.config = generate_config(self.ws, generator)
        if device is not None:  # this worker's GPU, in place of the configured 'auto' or 'cuda'
            self.config = self.config.model_copy(update={"device": device})
        check_settings(self.config)
        self.concepts: dict[str, Concept] = self.ws.concepts()
        self.repainter: Repainter | None = None
        self.msp: MSPGenerator | None = None
        if self.config.generator == "msp":
            from generators.msp.pipeline import MSPGenerator

            device, _ = resolve_device(self.config.device, "auto")
            # every planned subject needs a class in M_SAL: checked once here, before any image
            subjects = sorted({c for plan in self.ws.plans() for c in plan.concepts})
            self.msp = MSPGenerator.from_settings(self.config.msp, device=device, subjects=subjects)
        else:
            self.repainter = load_repainter(self.config.repaint, self.config)
        self.captioner: Captioner = load_captioner(self.config.recaption, self.config)
        self.gen_config = generator_config(self.config)

    def _paths(self, item: WorkItem) -> tuple[Path, Path]:
        folder = self.ws.shard_dir(item.shard)
        return folder / f"{item.candidate_id}.png", folder / f"{item.candidate_id}.json"

    def run(self, items: list[WorkItem]) -> list[str | None]:
        """Make and write candidates, `batch_size` of one canvas size per repaint or MSP call.

        Returns one failure reason (or None when it succeeded) per item, in order. A failure while
        preparing or finishing one candidate fails only that one; a failed repaint call fails its batch.
        """
        reasons: dict[str, str | None] = {}
        prepared: list[PreparedCandidate] = []
        for item in items:
            record = self._record(item)
            try:
                prepared.append((item, *self._prepare(item, record)))
            except Exception as exc:  # noqa: BLE001 - a failed candidate is data: recorded, counted, retried
                reasons[item.candidate_id] = self._fail(item, record, exc)
        for batch in _batches(prepared, batch_size(self.config)):
            try:
                painted = self._paint(batch)
            except Exception as exc:  # noqa: BLE001
                reasons |= {item.candidate_id: self._fail(item, record, exc) for item, record, _ in batch}
                continue
            for (item, _, _), (record, image) in zip(batch, painted, strict=True):
                try:
                    self._finish(item, record, image)
                    reasons[item.candidate_id] = None
                except Exception as exc:  # noqa: BLE001
                    reasons[item.candidate_id] = self._fail(item, record, exc)
        return [reasons[item.candidate_id] for item in items]

    def _record(self, item: WorkItem) -> Candidate:
        png, _ = self._paths(item)
        return Candidate(
            candidate_id=item.candidate_id,
            plan_id=item.plan.plan_id,
            shard=item.shard,
            image=self.ws.relative(png),
            concepts=item.plan.concepts,
            boxes=item.plan.boxes,
            width=item.plan.width,
            height=item.plan.height,
            background=item.plan.background,
            seed=item.seed,
            generator=self.config.generator,
            generator_config=self.gen_config,
        )

    def _fail(self, item: WorkItem, record: Candidate, exc: Exception) -> str:
        png, meta = self._paths(item)
        reason = exc.reason if isinstance(exc, CandidateFailure) else type(exc).__name__
        png.unlink(missing_ok=True)
        record = record.model_copy(update={"status": "failed", "error": f"{reason}: {exc}"})
        atomic_write_text(meta, record.model_dump_json(indent=2))
        return reason

    def _prepare(self, item: WorkItem, record: Candidate) -> tuple[Candidate, RepaintJob]:
        """Pick references and compose; the record gets everything known before repainting."""
        plan = item.plan
        missing = [c for c in plan.concepts if c not in self.concepts]
        if missing:
            raise CandidateFailure("unknown_concept", f"concepts not in the workspace: {', '.join(missing)}")
        picks = pick_references(plan, item.seed, self.concepts)
        background = procedural_background(plan.background, plan.width, plan.height, item.seed)
        composition = compose(self.ws, background, picks)
        job = RepaintJob(composition, repaint_prompt(plan, self.concepts), int(item.candidate_id, 16) % 2**63)
        placed = {layer.concept_id: layer.box for layer in composition.layers}
        record = record.model_copy(
            update={
                "boxes": [placed[c] for c in plan.concepts],
                "template_caption": template_caption(plan, self.concepts),
                "prompt": job.prompt,
                "refs_used": {concept.concept_id: concept.refs[i] for concept, i, _ in picks},
                "extra": {
                    "plan_boxes": [b.model_dump() for b in plan.boxes],
                    "masks_used": {concept.concept_id: concept.masks[i] for concept, i, _ in picks},
                    "planner": plan.planner,
                    # the diffusion seed (MSP records it as msp.seed): the id's hash, since plans share item.seed
                    **({"repaint_seed": job.seed} if self.msp is None else {}),
                    # what identity drift compares the repainted image with (192 bytes per concept)
                    PASTE_THUMBS: paste_thumbnails(
                        composition.image, list(placed.values()), plan.width, plan.height
                    ),
                    # where the pasted edges lie, for the seam score (about 1 KB)
                    PASTE_SILHOUETTES: encode_silhouettes(composition.silhouettes()),
                },
            }
        )
        return record, job

    def _paint(self, batch: list[PreparedCandidate]) -> list[tuple[Candidate, np.ndarray]]:
        """Final images of one batch, each with its record completed by the backend's provenance.

        MSP records its run under `extra["msp"]` (model, seed, kappa, switch step, segment and
        global prompts) as Gen4Gen records its repaint under `extra["repaint"]`; the prompt it
        conditioned the harmonization phase on becomes the candidate's prompt.
        """
        jobs = [job for _, _, job in batch]
        if self.repainter is not None:
            images = self.repainter(jobs)
            return [
                (record.model_copy(update={"extra": record.extra | {"repaint": self.repainter.config()}}), image)
                for (_, record, _), image in zip(batch, images, strict=True)
            ]
        from PIL import Image

        from generators.msp.segments import masks_from_layers

        assert self.msp is not None
        settings = self.config.msp
        plans = [item.plan for item, _, _ in batch]
        results = self.msp(
            plans,
            self.concepts,
            [job.seed for job in jobs],
            settings=settings,
            scaffolds=[Image.fromarray(job.composition.image) for job in jobs] if settings.scaffold else None,
            masks=[masks_from_layers(job.composition.layers, p.width, p.height) for job, p in zip(jobs, plans)],
        )
        return [
            (
                record.model_copy(
                    update={
                        "prompt": result.provenance["global_prompt"],
                        "extra": record.extra | {"msp": result.provenance},
                    }
                ),
                np.asarray(result.image.convert("RGB")),
            )
            for (_, record, _), result in zip(batch, results, strict=True)
        ]

    def _finish(self, item: WorkItem, record: Candidate, image: np.ndarray) -> None:
        """Caption the final image, then write PNG and JSON (atomically, PNG first)."""
        png, meta = self._paths(item)
        caption = self.captioner(image, item.plan, self.concepts, record.template_caption)
        ok, encoded = cv2.imencode(".png", image[..., ::-1], _PNG_PARAMS)
        if not ok:
            raise CandidateFailure("encode_failed", "PNG encoding failed")
        atomic_write_bytes(png, encoded.tobytes())
        extra = record.extra | {"recaption": self.captioner.config()}
        if caption.vlm_caption is not None:
            extra["vlm_caption"] = caption.vlm_caption
        record = record.model_copy(update={"caption": caption.text, "extra": extra})
        atomic_write_text(meta, record.model_dump_json(indent=2))
