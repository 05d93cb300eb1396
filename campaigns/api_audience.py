"""API: api_audience."""

from ninja import Router

router = Router()
