"""API: api_content."""

from ninja import Router

router = Router()
