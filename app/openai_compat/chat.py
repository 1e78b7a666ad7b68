"""/v1/chat/completions with a fine-tuned classifier: the conversation's user turns are the text, the assistant's
answer is the predicted label, and logprobs are the label distribution in OpenAI's shape. Requests go through
the same engine queue as /predict, so concurrent calls share mixed-adapter batches."""

from __future__ import annotations

import json
import math
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from app.errors import ValidationFailed
from app.inference.evaluation import thresholds_of
from app.openai_compat import schemas as oa
from app.openai_compat.models import resolve
from app.service import PeftServe
from app.stores.adapters import AdapterVersion
from app.training.chat import prompt_text


@dataclass
class Pending:
    """A completion queued on the engine: what answering it needs once its probabilities arrive."""

    body: oa.ChatCompletionCreate
    version: AdapterVersion
    future: Future  # its probabilities; `n_tokens`, set by the engine: the prompt's tokens


def submit(svc: PeftServe, body: oa.ChatCompletionCreate) -> Pending:
    """Check the request, find the model's adapter, queue the text; the caller awaits `future`."""
    _check_options(body)
    if body.model in svc.registry.sources:
        raise ValidationFailed(
            f"{body.model!r} is a base model without a trained head: chat with a fine-tuned model (ft:...)", "model"
        )
    version = resolve(svc, body.model)
    multi = bool(version.meta.get("multi_label"))
    if multi and (body.logprobs or (body.temperature or 0) > 0):
        raise ValidationFailed(
            "a multi-label model answers its labels over threshold: no logprobs or sampling", "model"
        )
    text = prompt_text(body.messages)
    if len(text) > svc.settings.max_text_chars:
        raise ValidationFailed(
            f"the user turns hold {len(text)} characters, over {svc.settings.max_text_chars}", "messages"
        )
    ((version, future),) = svc.queue([version], [text])
    return Pending(body, version, future)


def completion(pending: Pending, probs: torch.Tensor) -> oa.ChatCompletion:
    body, version = pending.body, pending.version
    p = probs[0].double().numpy()
    choices = [
        oa.Choice(index=i, message=oa.AssistantMessage(content=label), logprobs=_logprobs(body, version, p, label))
        for i, label in enumerate(_answers(body, version, p))
    ]
    return oa.ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        choices=choices,
        usage=_usage(pending, len(choices)),
        system_fingerprint=version.ref,
    )


def chunks(pending: Pending, probs: torch.Tensor) -> list[oa.ChatCompletionChunk]:
    """The streamed answer: one chunk carrying every choice (and a usage chunk when asked)."""
    whole = completion(pending, probs)
    out = [
        oa.ChatCompletionChunk(
            id=whole.id,
            created=whole.created,
            model=whole.model,
            system_fingerprint=whole.system_fingerprint,
            choices=[
                oa.ChunkChoice(
                    index=c.index,
                    delta=oa.Delta(role="assistant", content=c.message.content),
                    logprobs=c.logprobs,
                    finish_reason="stop",
                )
                for c in whole.choices
            ],
        )
    ]
    options = pending.body.stream_options
    if options is not None and options.include_usage:
        out.append(
            oa.ChatCompletionChunk(id=whole.id, created=whole.created, model=whole.model, choices=[], usage=whole.usage)
        )
    return out


# ---- answering -------------------------------------------------------------------------------------------------
def _check_options(body: oa.ChatCompletionCreate) -> None:
    sampling = (body.temperature or 0) > 0
    if body.n > 1 and not sampling:
        raise ValidationFailed(
            "n > 1 needs temperature > 0: a classifier's most likely label is one answer (sampled labels differ)", "n"
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise ValidationFailed("top_logprobs needs logprobs: true", "top_logprobs")


def _answers(body: oa.ChatCompletionCreate, version: AdapterVersion, p: np.ndarray) -> list[str]:
    labels = version.labels
    if version.meta.get("multi_label"):
        thresholds = thresholds_of(version) or [0.5] * len(labels)
        return [json.dumps([name for name, x, t in zip(labels, p, thresholds, strict=True) if x >= t])] * body.n
    if not (body.temperature or 0) > 0:
        return [labels[int(p.argmax())]] * body.n
    rng = np.random.default_rng(body.seed)
    weights = np.power(np.clip(p, 1e-12, None), 1.0 / body.temperature)
    weights = _nucleus(weights / weights.sum(), body.top_p or 1.0)
    return [labels[i] for i in rng.choice(len(labels), size=body.n, p=weights)]


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely labels holding `top_p` of the mass, renormalised."""
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()


def _logprobs(
    body: oa.ChatCompletionCreate, version: AdapterVersion, p: np.ndarray, label: str
) -> oa.ChoiceLogprobs | None:
    """The answer as one token: its log-probability, and the `top_logprobs` most likely labels'."""
    if not body.logprobs:
        return None
    labels = version.labels
    order = np.argsort(-p)[: body.top_logprobs or 0]
    top = [_token(labels[i], p[i]) for i in order]
    chosen = _token(label, p[labels.index(label)])
    return oa.ChoiceLogprobs(content=[oa.TokenLogprob(**chosen.model_dump(), top_logprobs=top)])


def _token(label: str, prob: float) -> oa.TopLogprob:
    return oa.TopLogprob(token=label, logprob=round(math.log(max(float(prob), 1e-300)), 6), bytes=list(label.encode()))


def _usage(pending: Pending, n_choices: int) -> oa.Usage:
    """The prompt's tokens as the engine fed them to the model; each answer is one label, one token."""
    prompt = int(getattr(pending.future, "n_tokens", 0))
    return oa.Usage(prompt_tokens=prompt, completion_tokens=n_choices, total_tokens=prompt + n_choices)
