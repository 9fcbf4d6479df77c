"""A VLM judge as one more machine score: per candidate, are the concepts there, kept, clean, good?

Strong synthetic multi-subject pipelines filter with a VLM quality assessment; here its verdict is
just more numeric fields on the samples (`judge_present`, `judge_identity`, `judge_artifacts`,
`judge_overall`, all "higher is better", plus `judge_reason`), so `curate calibrate` measures it
against human decisions like any other score before it may triage anything. The judge is a setting
(`[index] judge`, or `curate judge --model`): `openai:<model>` asks any OpenAI-compatible vision
endpoint (OPENAI_BASE_URL / OPENAI_API_KEY), anything else is a transformers image-text-to-text
model (hub id or folder: LLaVA, Qwen2-VL, ...) run here. Replies are cached by (setting, image
hash, prompt: concepts and caption), so a re-run sends nothing and loads no model, and a recaptioned
candidate is asked again; a reply that is not a valid verdict, even after `json_repair`, is logged
to index/judge_rejections.jsonl and the candidate is skipped, not guessed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.lock import writes
from curation.core.progress import ProgressFn, no_progress
from curation.core.workspace import Workspace, atomic_write_json

PRESENT, IDENTITY, ARTIFACTS, OVERALL, REASON = (
    "judge_present",
    "judge_identity",
    "judge_artifacts",
    "judge_overall",
    "judge_reason",
)
Rank = Annotated[int, Field(ge=1, le=5)]
OPENAI_PREFIX = "openai:"
MAX_NEW_TOKENS = 256  # a verdict is ~60 tokens; more is a model that does not stop
PROMPT = (
    "You check a synthetic training image for multi-concept personalization. Concepts that must appear: "
    "{concepts}. Caption: {caption!r}. Answer with one JSON object: "
    '{{"present": {{"<concept>": true|false, ...}}, "identity": 1-5 (5 = every concept looks like itself), '
    '"artifacts": 1-5 (5 = no visible artifacts, seams or distortions), "overall": 1-5, '
    '"reason": "<one line>"}}'
)


class Verdict(BaseModel):
    present: dict[str, bool]
    identity: Rank
    artifacts: Rank
    overall: Rank
    reason: Annotated[str, Field(max_length=300)]


@dataclass
class JudgeReport:
    judged: int
    cached: int
    malformed: int

    def summary(self) -> str:
        return (
            f"judge: {self.judged} candidates scored ({self.cached} replies from cache), {self.malformed} malformed "
            "replies skipped (index/judge_rejections.jsonl); calibrate with `curate calibrate`"
        )


def parse_verdict(text: str, concepts: list[str]) -> Verdict:
    """The verdict in a reply, repaired when it is almost JSON; ValueError when it is not a verdict."""
    import json_repair

    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the reply")
    try:
        verdict = Verdict.model_validate(json_repair.loads(text[start:]))
    except ValidationError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if set(verdict.present) != set(concepts):
        raise ValueError(f"present names {sorted(verdict.present)}, expected {sorted(concepts)}")
    return verdict


class Unanswered(Exception):
    """The judge gave no reply for this candidate (an endpoint still failing after its retries)."""


class VLM(Protocol):
    def ask(self, prompt: str, image: bytes) -> str:
        """The model's reply to the prompt about the PNG image; raises Unanswered to skip it."""
        ...


class OpenAIJudge:
    """A vision model behind an OpenAI-compatible endpoint (OPENAI_BASE_URL / OPENAI_API_KEY)."""

    def __init__(self, model: str) -> None:
        import openai

        if not os.environ.get("OPENAI_API_KEY"):
            raise CurateError(
                "the judge needs OPENAI_API_KEY (any value for a local server) and OPENAI_BASE_URL"
            )
        self.model = model
        self.client = openai.OpenAI(max_retries=3, timeout=120)

    def ask(self, prompt: str, image: bytes) -> str:
        import openai

        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        try:
            response = self.client.chat.completions.create(
                model=self.model, temperature=0, messages=[{"role": "user", "content": content}]
            )
        except openai.APIConnectionError as exc:
            raise CurateError(f"cannot reach the judge endpoint {self.client.base_url}: {exc}") from exc
        except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError) as exc:
            raise Unanswered(f"{type(exc).__name__} after retries") from exc
        return response.choices[0].message.content or ""


class TransformersJudge:
    """An image-text-to-text model (hub id or folder) through its processor's chat template, greedy."""

    def __init__(self, name: str) -> None:
        from curation.models.registry import require_local

        require_local("index.judge", name)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from curation.core.devices import resolve_device

        self.device, dtype = resolve_device("auto", "auto")
        try:
            self.processor = AutoProcessor.from_pretrained(name)
            self.model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise CurateError(
                f"cannot load the judge {name!r} as a transformers vision-language model "
                f"(use openai:<model> for an endpoint): {str(exc).splitlines()[0]}"
            ) from exc
        self.no_grad = torch.no_grad

    def ask(self, prompt: str, image: bytes) -> str:
        from PIL import Image

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        with Image.open(io.BytesIO(image)) as picture:
            inputs = self.processor(images=picture.convert("RGB"), text=text, return_tensors="pt")
        inputs = inputs.to(self.device, self.model.dtype)
        with self.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def load_judge(setting: str) -> VLM:
    """`openai:<model>` is an endpoint's model; anything else a transformers hub id or folder."""
    if setting.startswith(OPENAI_PREFIX):
        return OpenAIJudge(setting.removeprefix(OPENAI_PREFIX))
    return TransformersJudge(setting)


@writes("index")
def judge(ws: Workspace, setting: str, progress: ProgressFn = no_progress) -> JudgeReport:
    """Ask the VLM about every candidate of the dataset and write its verdict fields.

    The model is loaded only when some candidate's reply is not cached yet.
    """
    import fiftyone as fo

    if not setting.strip():
        raise CurateError('no judge: set [index] judge ("openai:<model>" or a transformers VLM id/folder)')
    dataset = ds.open_dataset(ws, require_samples=True)
    names = {cid: c.name for cid, c in ws.concepts().items()}
    cache = ws.root / "index" / "judge_cache"
    rejections = ws.root / "index" / "judge_rejections.jsonl"
    fields = [ds.CANDIDATE_ID, "filepath", ds.CONCEPTS, ds.CAPTION]
    rows = list(zip(*dataset.values(fields), ds.field_values(dataset, ds.IMAGE_HASH), strict=True))
    verdicts: dict[str, Verdict] = {}
    vlm: VLM | None = None
    cached = malformed = 0
    for done, (cid, filepath, concepts, caption, indexed_hash) in enumerate(rows, 1):
        labels = [names.get(c, c) for c in concepts or []]
        prompt = PROMPT.format(concepts=", ".join(labels) or "(none)", caption=caption or "")
        # the index already hashed each image it decoded: reading every image again only to hash it
        # cost a full pass over the candidates on every run; the prompt (caption included) is in the
        # key, so a recaptioned candidate is asked again instead of given its old verdict
        image_key = indexed_hash or hashlib.sha256(Path(filepath).read_bytes()).hexdigest()[:16]
        key = hashlib.sha256(json.dumps([setting, image_key, prompt]).encode()).hexdigest()
        path = cache / f"{key}.json"
        if path.exists():
            reply, cached = json.loads(path.read_text())["reply"], cached + 1
        else:
            vlm = vlm or load_judge(setting)
            try:
                reply = vlm.ask(prompt, Path(filepath).read_bytes())
            except Unanswered as exc:
                _log(rejections, cid, str(exc), "")
                malformed += 1
                continue
            atomic_write_json(path, {"model": setting, "candidate_id": cid, "reply": reply})
        try:
            verdicts[cid] = parse_verdict(reply, labels)
        except ValueError as exc:
            _log(rejections, cid, str(exc), reply)
            malformed += 1
        progress("judge", done, len(rows))
    for name, kind in ((PRESENT, fo.FloatField), (IDENTITY, fo.IntField), (ARTIFACTS, fo.IntField),
                       (OVERALL, fo.IntField), (REASON, fo.StringField)):  # fmt: skip
        if not dataset.has_field(name):
            dataset.add_sample_field(name, kind)
    columns: dict[str, dict[str, Any]] = {
        PRESENT: {c: sum(v.present.values()) / max(len(v.present), 1) for c, v in verdicts.items()},
        IDENTITY: {c: v.identity for c, v in verdicts.items()},
        ARTIFACTS: {c: v.artifacts for c, v in verdicts.items()},
        OVERALL: {c: v.overall for c, v in verdicts.items()},
        REASON: {c: v.reason for c, v in verdicts.items()},
    }
    if verdicts:
        for name, values in columns.items():
            dataset.set_values(name, values, key_field=ds.CANDIDATE_ID)
    return JudgeReport(len(verdicts), cached, malformed)


def _log(path: Path, cid: str, problem: str, reply: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps({"candidate_id": cid, "problem": problem, "reply": reply[:2000]}) + "\n")
