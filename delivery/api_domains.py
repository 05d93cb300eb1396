"""API: api_domains."""

from ninja import Router

router = Router()
