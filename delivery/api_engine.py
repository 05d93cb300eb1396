"""API: api_engine."""

from ninja import Router

router = Router()
