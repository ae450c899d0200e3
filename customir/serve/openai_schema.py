"""The OpenAI embeddings wire format (the subset this server implements), as pydantic models.

The official ``openai`` client asks for ``encoding_format="base64"`` by default (little-endian
float32 bytes), so both formats are served. Input is text only: token ids are refused (see
:data:`TOKEN_IDS_REFUSED`), and half a surrogate pair in a string is replaced by U+FFFD, as
ingest does with the corpus.
"""

from __future__ import annotations

import base64
from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, Field

# light (re and the stdlib html parser): the replica and the package import stay torch-free
from customir.corpus.readers import whole_characters

# Ids from another tokenizer (LangChain's OpenAIEmbeddings sends tiktoken ids by default) would
# be embedded as this model's tokens without an error, so they are refused with what to send.
TOKEN_IDS_REFUSED = (
    "'input' must be text (a string or a list of strings); token ids are not accepted, since "
    "ids from another tokenizer would embed the wrong words. LangChain's OpenAIEmbeddings sends "
    "token ids unless created with check_embedding_ctx_length=False")


class EmbeddingRequest(BaseModel):
    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="Text or list of texts (token-id input is refused with what to send).")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "customir"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RequestError(ValueError):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": self.code}}


def validation_message(errors: list[dict], content_type: str = "application/json") -> str:
    """One plain line for what FastAPI found wrong in a request body (its errors for a union
    field list every member: ``input.str: ...; input.list[int].0: ...``).

    >>> validation_message([{"type": "json_invalid", "loc": ("body", 9), "msg": "JSON decode "
    ...                      "error", "ctx": {"error": "Expecting value"}}])
    'malformed JSON at character 9: Expecting value'
    >>> validation_message([{"type": "model_attributes_type", "loc": ("body",), "msg": "",
    ...                      "input": b'{"input": "hi"}'}], "application/x-www-form-urlencoded")
    "send the body as JSON with 'Content-Type: application/json'"
    >>> validation_message([{"type": "string_type", "loc": ("body", "input", "str")},
    ...                     {"type": "list_type", "loc": ("body", "input", "list[str]")}])
    "'input' must be a string or a list of strings"
    """
    parts: list[str] = []
    for error in errors:
        where = error["loc"][1:]
        if error["type"] == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "cannot be parsed")
            return f"malformed JSON at character {where[0] if where else 0}: {reason}"
        if not where:  # the body as a whole
            if "json" not in content_type.lower():
                return "send the body as JSON with 'Content-Type: application/json'"
            return "the body must be a JSON object, e.g. {\"input\": \"text\"}"
        field = str(where[0])
        if error["type"] == "missing":
            part = f"'{field}' is required"
        elif field == "input":
            part = "'input' must be a string or a list of strings"
        else:
            part = f"'{field}': {error['msg']}"
        if part not in parts:
            parts.append(part)
    return "; ".join(parts[:3]) or "invalid request"


def validate_request(request: EmbeddingRequest, served_model: str, dimension: int,
                     max_items: int, max_chars: int = 20000) -> list[str]:
    """The texts to embed, or a RequestError saying what is wrong with the request. A lone
    surrogate (legal JSON, e.g. ``"\\ud83d"`` from a client that cut an emoji in half; no
    tokenizer accepts it) becomes U+FFFD, as in ingest, rather than failing the request.

    >>> validate_request(EmbeddingRequest(input="hi"), "m", 384, 10)
    ['hi']
    >>> validate_request(EmbeddingRequest(input="cut \\ud83d"), "m", 384, 10) == ["cut \\ufffd"]
    True
    """
    if request.model is not None and request.model != served_model:
        raise RequestError(f"model {request.model!r} is not served here; use {served_model!r}",
                           "model", 404, "model_not_found")
    if request.dimensions is not None and request.dimensions != dimension:
        raise RequestError(f"this model returns {dimension} dimensions; 'dimensions' must be "
                           f"{dimension} or omitted", "dimensions")
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise RequestError("'input' must not be empty", "input")
    if not all(isinstance(t, str) for t in texts):
        raise RequestError(TOKEN_IDS_REFUSED, "input")
    if len(texts) > max_items:
        raise RequestError(f"'input' has {len(texts)} items; at most {max_items} per request",
                           "input")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise RequestError(f"'input' items {empty[:5]} are empty strings", "input")
    long = [i for i, t in enumerate(texts) if len(t) > max_chars]
    if long:
        raise RequestError(f"'input' item {long[0]} has {len(texts[long[0]])} characters; at "
                           f"most {max_chars} per item", "input")
    return [whole_characters(t) for t in texts]


def encode_embedding(vector: np.ndarray, encoding_format: str) -> Union[list[float], str]:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]
