"""`curate demo`: the whole chain on photos that ship with scikit-image, with offline defaults.

The demo is the first thing a new user runs, so it uses exactly the library functions behind the
other commands (no shortcuts) and tells where each result lives. With review on, a scripted
annotator answers every task through the Label Studio API so that pull and export have something
to show; its answers come from a machine score (not a judgement of quality), and a human can
edit them in the browser and run `curate review pull` and `curate export` again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from curation.core.config import CurateConfig, SegmentConfig
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import Workspace

# concept id -> (class noun, scikit-image sample function)
DEMO_CONCEPTS: dict[str, tuple[str, str]] = {
    "mug": ("mug", "coffee"),
    "rocket": ("rocket", "rocket"),
    "shuttle": ("space shuttle", "astronaut"),
    "coin": ("coin", "coins"),
}
"""Subjects that stand whole in scikit-image's photos and cut out whole with the offline backend.
Not the cat (`chelsea` is a face filling the frame: no whole cat to cut out), nor the astronaut herself
(the frame cuts her body and her black collar matches the helmet beside her, so head and suit come
apart), nor the clock (`clock` is a motion-blurred grey blob)."""


DEMO_FRAMING: dict[str, tuple[float, float, float, float]] = {
    "rocket": (0.05, 1.0, 0.38, 0.62),
    "astronaut": (0.0, 0.58, 0.66, 1.0),
    "coins": (0.0, 0.28, 0.765, 0.975),
}
"""Sample -> (top, bottom, left, right) fractions framing its subject as a user would shoot it: the full
rocket photo is mostly sky and towers (the classical backend cut out a sky rectangle from it), the
shuttle model stands beside the astronaut, and the coins photo holds 24 coins, of which one is framed."""


DEMO_CLOSER: dict[str, int] = {"coffee": 24}
"""Sample -> the closer view trims 1/N of each side (12 unless named): the coffee's saucer nearly fills
its photo, and at 1/12 it ran out of the frame and the cut-out lost the cup's middle; the rocket's
lit launch pad, at 1/24, ran into the bottom edge and was cut out with it."""


def _views_of(photo: np.ndarray, closer: int) -> list[np.ndarray]:
    """Three 'photos' of one concept: as shot, mirrored, and a step closer (several refs per concept)."""
    h, w = photo.shape[:2]
    crop = photo[h // closer : h - h // closer, w // closer : w - w // closer]
    return [photo, photo[:, ::-1], crop]


def write_sample_photos(folder: Path) -> dict[str, list[Path]]:
    """Write the demo concepts' photos as PNG files, as a user's own photos would arrive."""
    import skimage.data

    photos: dict[str, list[Path]] = {}
    for concept_id, (_, sample) in DEMO_CONCEPTS.items():
        image = np.asarray(getattr(skimage.data, sample)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if sample in DEMO_FRAMING:
            top, bottom, left, right = DEMO_FRAMING[sample]
            h, w = image.shape[:2]
            image = image[round(top * h) : round(bottom * h), round(left * w) : round(right * w)]
        target = folder / concept_id
        target.mkdir(parents=True, exist_ok=True)
        photos[concept_id] = []
        for i, view in enumerate(_views_of(image[..., :3], DEMO_CLOSER.get(sample, 12))):
            path = target / f"{sample}_{i}.png"
            if not path.exists():
                Image.fromarray(np.ascontiguousarray(view)).save(path)
            photos[concept_id].append(path)
    return photos


def demo_config() -> CurateConfig:
    """The defaults, except that `auto` segmentation never fetches: the demo downloads nothing and takes
    a segmentation model only when one is already on this machine (IS-Net in rembg's folder, say)."""
    return CurateConfig(segment=SegmentConfig(fetch=False))


def run_demo(
    root: Path,
    n_plans: int,
    review: bool,
    echo: Callable[[str], None],
    progress: ProgressFn = no_progress,
) -> None:
    """Build the workspace at `root` and run every step once; safe to re-run (each step upserts)."""
    from curation.concepts.references import add_concept
    from curation.index.run import index_workspace
    from exports.mycanvas import export_mycanvas
    from generators.layout import plan_layouts
    from generators.run import generate

    ws = Workspace.create(root, demo_config())
    echo(f"workspace: {ws.root}")
    photos = write_sample_photos(ws.root / "photos")
    for concept_id, paths in photos.items():
        concept = add_concept(ws, concept_id, paths, class_noun=DEMO_CONCEPTS[concept_id][0], progress=progress)
        echo(f"concept {concept.concept_id}: {len(concept.refs)} photos, token {concept.token}")
    plans = plan_layouts(ws, n_plans)
    echo(f"plans: {len(plans)} layouts in {ws.plans_path}")
    echo(generate(ws, progress=progress).summary())
    echo(index_workspace(ws, progress=progress).summary())
    echo(f"browse: curate app -w {ws.root}   (FiftyOne App on http://127.0.0.1:5151)")
    if review:
        from curation.review.pull import pull
        from curation.review.push import push
        from curation.review.server import serve

        info = serve(ws)
        echo(push(ws).summary())
        echo(f"annotated by the scripted demo annotator: {annotate_for_demo(ws)} tasks")
        echo(pull(ws).summary())
        login = f"  login {info.email}, password in {info.path}" if info.managed else ""
        echo(f"review: {info.url}{login}  (stop with `curate review stop -w {ws.root}`)")
        report = export_mycanvas(ws, progress=progress)
        echo(report.summary())
    else:
        echo("review skipped (--no-review): nothing is accepted yet, so there is nothing to export")


def annotate_for_demo(ws: Workspace) -> int:
    """Answer every unanswered task from the mean artifact score, through the API; returns how many.

    The cleanest third is accepted with quality 5, the next third accepted with 3, the rest
    rejected with 2: enough spread to show the quality threshold at work in the export.
    """
    from curation.core import dataset as ds
    from curation.review.client import connect
    from curation.review.project import ensure_project
    from curation.review.pull import annotation_result
    from curation.review.task_page import CANDIDATE_IDS
    from curation.scores.artifacts import ARTIFACT_SCORES

    dataset = ds.open_dataset(ws)
    fields = [name for name in ARTIFACT_SCORES if dataset.has_field(name)]
    ids = dataset.values(ds.CANDIDATE_ID)
    columns = [dataset.values(name) for name in fields]
    badness = {cid: float(np.mean([c[i] or 0.0 for c in columns])) if columns else 0.0 for i, cid in enumerate(ids)}
    ranked = sorted(badness, key=lambda cid: (badness[cid], cid))
    third = max(1, len(ranked) // 3)
    answers = {cid: ("accept", 5) if i < third else ("accept", 3) if i < 2 * third else ("reject", 2)
               for i, cid in enumerate(ranked)}  # fmt: skip

    conn = connect(ws)
    project_id = ensure_project(ws, conn)
    answered = 0
    for task in conn.client.tasks.list(project=project_id, fields="task_only"):
        # a page (`review.candidates_per_page` > 1) answers each of its candidates in its slot
        page = task.data.get(CANDIDATE_IDS) or [task.data.get(ds.CANDIDATE_ID)]
        if task.total_annotations or not all(cid in answers for cid in page):
            continue
        result = [{**answer, "item_index": slot} for slot, cid in enumerate(page)
                  for answer in annotation_result(*answers[cid])]  # fmt: skip
        conn.call("demo annotation", lambda t=task.id, r=result: conn.client.annotations.create(id=t, result=r))
        answered += 1
    return answered

