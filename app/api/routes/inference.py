import asyncio

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.schemas import (
    EvaluateRequest,
    EvaluateResponse,
    MultiLabelEvaluateResponse,
    MultiPredictResponse,
    PredictRequest,
    PredictResponse,
)

router = APIRouter(tags=["inference"])


@router.post("/predict")
async def predict(*, svc: ServiceDep, body: PredictRequest) -> PredictResponse | MultiPredictResponse:
    """Classify one text or a list with an adapter (`name` = newest version, `name@vN` pinned), or with several
    (`adapters`: every input answered by each, in one mixed batch)."""
    if body.adapters is not None:
        queued = svc.submit_predict_each(body)
        answers = [(version, await asyncio.wrap_future(future)) for version, future in queued]
        return svc.multi_predict_response(body.adapters, answers)
    version, future = svc.submit_predict(body)  # validation and queueing only: cheap, no thread hop
    return svc.predict_response(version, await asyncio.wrap_future(future))


@router.post("/evaluate")
async def evaluate(*, svc: ServiceDep, body: EvaluateRequest) -> EvaluateResponse | MultiLabelEvaluateResponse:
    """Accuracy, macro P/R/F1 and the confusion matrix of an adapter on labelled records."""
    return await run_in_threadpool(svc.evaluate, body)
