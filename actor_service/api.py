"""HTTP request and response bodies of ``POST /rank`` (pydantic: validation and OpenAPI schema).

Limits mirror the impression schema (``schemas.events``), so a request that validates here
always makes a valid impression record: ids are 1..128 characters, numbers are finite and within
+-``schemas.MAX_ABS_NUMBER`` (float32-safe once featurized), lists are bounded. Feature *widths*
depend on the served model and are checked when featurizing (``model.featurize.FeatureError``),
which the app maps to the same 422 error shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas import (
    MAX_ABS_NUMBER,
    MAX_CONTEXT,
    MAX_HISTORY,
    MAX_ID_LEN,
    MAX_ITEM_FEATURES,
    MAX_ITEMS,
    MAX_USER_FEATURES,
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]
Number = Annotated[float, Field(ge=-MAX_ABS_NUMBER, le=MAX_ABS_NUMBER)]
"""A feature value: finite (``allow_inf_nan=False``) and float32-safe, as the schemas demand."""

_STRICT = ConfigDict(extra="ignore", allow_inf_nan=False)


class Candidate(BaseModel):
    model_config = _STRICT

    item_id: Id
    features: list[Number] = Field(max_length=MAX_ITEM_FEATURES, description="item feature vector")


class RankRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "request_id": "req-7f3a9c",
                    "user_id": "user-1842",
                    "user_features": [0.12, -0.5, 0.33],
                    "history": ["item-301", "item-77"],
                    "context": [1.0, 0.0],
                    "items": [
                        {"item_id": "item-5521", "features": [0.8, 0.1]},
                        {"item_id": "item-1208", "features": [0.42, 0.9]},
                    ],
                }
            ]
        },
    )

    request_id: Id | None = Field(
        default=None, description="unique id of this list (Kafka key of its impression); uuid4 hex if absent"
    )
    user_id: Id
    user_features: list[Number] = Field(max_length=MAX_USER_FEATURES, description="user feature vector")
    history: list[Id] = Field(
        default_factory=list, max_length=MAX_HISTORY, description="item ids, most recent last"
    )
    context: list[Number] = Field(max_length=MAX_CONTEXT, description="request context features")
    items: list[Candidate] = Field(
        min_length=1, max_length=MAX_ITEMS, description="candidates to rank (unique item ids)"
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="return and log only the top k items: the list the user is actually shown "
        "(unshown candidates must not be logged, or the join would count them as skipped)",
    )

    @field_validator("items")
    @classmethod
    def _unique_item_ids(cls, items: list[Candidate]) -> list[Candidate]:
        seen: dict[str, int] = {}
        for i, it in enumerate(items):
            j = seen.setdefault(it.item_id, i)
            if j != i:
                raise ValueError(f"duplicate item_id {it.item_id!r} at items[{i}] (also items[{j}])")
        return items


class RankedItem(BaseModel):
    item_id: str
    position: int = Field(description="served position, 0 = top")
    score: float = Field(description="final score: sum_k weight_k * normalized objective_k")
    objective_scores: dict[str, float] = Field(
        description="per-objective predictions in natural units (click probability, dwell seconds)"
    )


class RankResponse(BaseModel):
    request_id: str
    snapshot_version: int = Field(description="actor snapshot that ranked the list; 0 = cold-start model")
    objectives: list[str]
    weights: list[float] = Field(description="the user's objective weights actually used (after noise)")
    noise: list[float] = Field(description="exploration noise applied (weight-generator logit space)")
    log_propensity: float | None = Field(
        default=None,
        description="log density of the served weights given the state (model.policy.log_propensity);"
        " null when served without noise",
    )
    arm: str | None = Field(
        default=None,
        description="rollout arm that served the list: holdout (fixed weights), personalized or canary"
        " (docs/rollout.md); null in direct mode without a holdout",
    )
    items: list[RankedItem] = Field(description="the ranked list, top first")


class FieldError(BaseModel):
    field: str = Field(description="offending field, e.g. items[3].features")
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[FieldError] | str


def field_path(loc: Sequence[Any]) -> str:
    """pydantic/FastAPI ``loc`` -> ``items[3].features[2]`` (the schemas package's field style)."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "$"


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """FastAPI's ``RequestValidationError.errors()`` -> ``[{field, msg, type}]``."""
    out = []
    for e in errors:
        loc = e.get("loc", ())
        kind = str(e.get("type", "value_error"))
        # A body that is not JSON reports a byte offset as its loc, not a field.
        field = "$" if kind == "json_invalid" else field_path(loc)
        out.append({"field": field, "msg": str(e.get("msg", "")), "type": kind})
    return out
