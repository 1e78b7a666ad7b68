import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.openai_compat import chat
from app.openai_compat.schemas import ChatCompletion, ChatCompletionChunk, ChatCompletionCreate

router = APIRouter(prefix="/v1/chat", tags=["openai: chat"])

_STREAM_DOC = {
    "description": "`stream: true`: Server-Sent Events, `data: <chat.completion.chunk JSON>` then `data: [DONE]`",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post("/completions", response_model=ChatCompletion, responses={200: _STREAM_DOC})
async def create_completion(*, svc: ServiceDep, body: ChatCompletionCreate) -> Any:
    """Classify the conversation's user turns with a fine-tuned model: the assistant's answer is the label,
    logprobs the label distribution; batched with every other request on the engine."""
    pending = await run_in_threadpool(chat.submit, svc, body)
    probs = await asyncio.wrap_future(pending.future)
    if not body.stream:
        return chat.completion(pending, probs)
    return StreamingResponse(_events(chat.chunks(pending, probs)), media_type="text/event-stream")


async def _events(chunks: list[ChatCompletionChunk]) -> AsyncIterator[str]:
    for c in chunks:
        yield f"data: {c.model_dump_json(exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"
