"""The one list envelope of every paginated endpoint (OpenAI's ``{object: "list", data, has_more, ...}``)."""

from __future__ import annotations

from typing import Generic, Literal, Self, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


class CursorPage(BaseModel, Generic[T]):
    """A page of objects with the cursors a client passes back as ``after``."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list[T], has_more: bool) -> Self:
        """Wrap ``data`` (objects with an ``id``), filling the first and last cursors."""
        ids = [getattr(item, "id", None) for item in data]
        return cls(
            data=data, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None
        )
