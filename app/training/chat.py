"""OpenAI chat rows as classification rows: `{"messages": [...]}` whose last message is the assistant's label.

The text a classifier reads is the conversation's user turns, joined by newlines. System (and developer) turns
are kept apart: they are dropped from the text, in training rows and in chat completions alike. In an
OpenAI classification file they hold the same instruction on every row ("Classify the sentiment..."), which
tells a generative model what to do and tells a classifier nothing, while costing it tokens on every row and
pushing the user's words towards the truncation limit. Earlier assistant turns are dropped too: the label is
the last one.
"""

from __future__ import annotations

from typing import Any

from app.errors import ValidationFailed

ROLES = ("system", "developer", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}  # `weight` (OpenAI: learn from this turn or not) is ignored


def is_chat_row(row: Any) -> bool:
    return isinstance(row, dict) and "messages" in row


def chat_record(row: dict, where: str) -> dict:
    """A training row from a chat row: {"text": the user turns, "label": the last (assistant) message}."""
    extra = sorted(set(row) - {"messages"})
    if extra:
        raise ValidationFailed(
            f"a chat row holds messages only, found {extra} too (tools and functions don't apply to a classifier)",
            field=where,
        )
    messages = _messages(row["messages"], f"{where}.messages")
    last = messages[-1]
    if last["role"] != "assistant":
        raise ValidationFailed(
            "the last message must be the assistant's: its content is the row's label",
            field=f"{where}.messages[{len(messages) - 1}]",
        )
    label = _content(last, f"{where}.messages[{len(messages) - 1}].content")
    return {"text": user_text(messages[:-1], f"{where}.messages"), "label": label.strip()}


def prompt_text(messages: Any, field: str = "messages") -> str:
    """The text a chat completion classifies: the user turns of a conversation that ends with one."""
    checked = _messages(messages, field)
    if checked[-1]["role"] != "user":
        raise ValidationFailed("the last message must be the user's: it is what gets classified", field=field)
    return user_text(checked, field)


def user_text(messages: list[dict], field: str) -> str:
    turns = [_content(m, f"{field}[{i}].content") for i, m in enumerate(messages) if m["role"] == "user"]
    if not turns:
        raise ValidationFailed("needs at least one user message: its content is the text classified", field=field)
    return "\n".join(turns)


def _messages(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValidationFailed("messages must be a non-empty list of {role, content} objects", field=field)
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValidationFailed("each message must be an object with role and content", field=f"{field}[{i}]")
        if m.get("role") not in ROLES:
            raise ValidationFailed(
                f"role must be one of {', '.join(ROLES)}, got {m.get('role')!r}", field=f"{field}[{i}].role"
            )
        extra = sorted(set(m) - MESSAGE_KEYS)
        if extra:
            raise ValidationFailed(
                f"unsupported message key(s) {extra}; a message has role and content", field=f"{field}[{i}]"
            )
    return value


def _content(message: dict, field: str) -> str:
    """A message's text: a string, or a list of text parts ({"type": "text", "text": ...}) joined."""
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ValidationFailed("content parts must be text parts ({type: text, text}); images don't apply", field)
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ValidationFailed(f"content must be a string, got {type(content).__name__}", field=field)
    if not content.strip():
        raise ValidationFailed("content is empty", field=field)
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800": no tokenizer takes it
        raise ValidationFailed(f"content is not valid Unicode (unpaired surrogate at {e.start})", field) from None
    return content
