"""Dependencies as Annotated aliases; getters read app.state so tests can override them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import PeftServe


def get_service(request: Request) -> PeftServe:
    return request.app.state.service


ServiceDep = Annotated[PeftServe, Depends(get_service)]
