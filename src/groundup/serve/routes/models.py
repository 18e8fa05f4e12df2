"""``GET /v1/models`` and ``GET /v1/models/{id}``: the one model this server serves."""

from __future__ import annotations

import fastapi

from groundup.serve.state import ServerState, State
from groundup.serve.validation import check_model

router = fastapi.APIRouter()


def model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "groundup",
            "max_model_len": state.engine.max_len}


@router.get("/v1/models")
async def list_models(state: State):
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State):
    check_model(state, model_id)
    return model_card(state)
