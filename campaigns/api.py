from ninja import Router

from campaigns.api_audience import router as audience_router
from campaigns.api_audit import router as audit_router
from campaigns.api_content import router as content_router

router = Router()
router.add_router("/", audience_router)
router.add_router("/", content_router)
router.add_router("/", audit_router)
