from fastapi import APIRouter, Response

from app.api.deps import ServiceDep
from app.telemetry import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(*, svc: ServiceDep) -> Response:
    """Prometheus metrics: jobs by status, queue, training speed, predict latency, batch sizes, adapter cache."""
    return Response(svc.telemetry.render(), media_type=CONTENT_TYPE)
