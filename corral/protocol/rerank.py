"""Reranking wire models: ``POST /v1/rerank`` in the shape Cohere, Jina, vLLM and
llama-server share (``query``, ``documents``, ``top_n``, ``return_documents``).

This module depends on pydantic only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_DOCUMENTS = 1000


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentObject(_Request):
    text: str


class RerankRequest(_Request):
    model: str
    query: str
    documents: Annotated[list[str | DocumentObject], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankDocument(_Wire):
    text: str


class RerankResult(_Wire):
    index: int
    relevance_score: float
    document: RerankDocument | None = Field(None, exclude_if=lambda v: v is None)


class RerankUsage(_Wire):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(_Wire):
    id: str
    object: str = "rerank"
    model: str
    results: list[RerankResult]
    usage: RerankUsage
